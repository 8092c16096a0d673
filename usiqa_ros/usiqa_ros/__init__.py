"""usiqa_ros: ultrasound image quality assessment for robot-held probes.

`usiqa_ros.core` is ROS-free (model, preprocessing, engine, checkpoints, data, training, metrics);
`usiqa_ros.ros` is the thin ROS 2 layer; `usiqa_ros.tools` holds command-line tools.
"""

__version__ = "0.1.0"
