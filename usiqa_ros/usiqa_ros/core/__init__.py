"""ROS-free core: model, preprocessing, engine, checkpoints, data, training, metrics.

Nothing under this package may import rclpy or ROS message packages (checked by a test).
"""
