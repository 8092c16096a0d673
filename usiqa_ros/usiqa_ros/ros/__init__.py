"""ROS 2 layer: message conversion, the IQA lifecycle node, best-view action server, diagnostics."""
