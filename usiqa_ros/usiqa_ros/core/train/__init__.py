"""Training: supervised USQNet, CRL-UIQA, distributed helpers, the default-model recipe (ROS-free)."""
