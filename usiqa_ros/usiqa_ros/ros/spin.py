"""The one way our small command-line nodes run: init, build, spin until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """rclpy.init(args), make_node(), spin; Ctrl-C and external shutdown end it quietly."""
    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A second SIGINT while cleaning up (`ros2 launch` forwards one after `kill -INT -PGID` or a terminal's
        # Ctrl-C already reached the process group) would abort destroy_node: "process has died ... exit code -2".
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.destroy_node()
        rclpy.try_shutdown()
