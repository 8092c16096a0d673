"""Helpers for tests with real rclpy nodes: a background executor, waiting for conditions, frame messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from usiqa_ros.core.convert import array_to_image
from usiqa_ros.ros.spin import MultiThreadedExecutor

SAMPLE_FRAMES = Path(__file__).resolve().parents[1] / "usiqa_ros" / "sample_frames"


class Spinner:
    """Spins nodes in the package's MultiThreadedExecutor (the one iqa_node uses) on a background thread."""

    def __init__(self, *nodes: Node, threads: int = 4) -> None:
        self.executor = MultiThreadedExecutor(num_threads=threads)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add(self, node: Node) -> None:
        self.executor.add_node(node)

    def stop(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until cond() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")


def sample_frames(n: int | None = None) -> list[np.ndarray]:
    files = sorted(SAMPLE_FRAMES.glob("*.png"))[:n]
    return [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]


def image_msg(frame: np.ndarray, stamp_ns: int, frame_id: str = "us_probe_link", encoding: str | None = None) -> Image:
    msg = array_to_image(frame, Image, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def shut_down(node: Any) -> None:
    """Lifecycle shutdown through the public API while the executor still spins (ends best-view goals, stops the
    worker); a node already finalized is left as it is. Then stop the spinner and call destroy_node()."""
    try:
        node.trigger_shutdown()
    except RuntimeError:  # rclpy's RCLError: no shutdown transition from the current state (already finalized)
        pass


@contextmanager
def running_iqa_node(name: str = "iqa_test", **params: Any) -> Iterator[Any]:
    """An IqaNode configured and activated with `params` (parameter overrides), spinning in the background."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from usiqa_ros.ros.iqa_node import IqaNode

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = IqaNode(name, parameter_overrides=overrides)
    spinner = Spinner(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, "configure failed"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS, "activate failed"
        yield node
    finally:
        shut_down(node)
        spinner.stop()
        node.destroy_node()
