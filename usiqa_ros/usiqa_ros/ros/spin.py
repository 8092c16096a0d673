"""The one way our small command-line nodes run: init, build, spin until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def ignore_sigint() -> None:
    """From here on ignore SIGINT: a second one while cleaning up (`ros2 launch` forwards one after `kill -INT
    -PGID` or a terminal's Ctrl-C already reached the process group) would cut the worker join, destroy_node and
    the rclpy shutdown short (launch: "process has died ... exit code -2")."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """rclpy.init(args), make_node(), spin; Ctrl-C and external shutdown end it quietly."""
    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_sigint()
        node.destroy_node()
        rclpy.try_shutdown()
