"""Benchmarks of usiqa_ros: `python -m benchmarks.run` (engine, node overhead, stream, scaling)."""
