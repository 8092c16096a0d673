"""ROS 2 nodes and launchers of the demos and tools (publisher, score printer, probe simulator, bag replay)."""
