"""Command-line tools: demo publisher, score printer, demo runner, bag tools, probe simulator."""
