"""Datasets, splits and graded synthetic data for training and evaluation (ROS-free)."""
