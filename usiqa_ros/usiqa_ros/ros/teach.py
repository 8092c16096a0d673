"""Teach the target view from a planner: call the IQA node's reference services with one line each.

    from usiqa_ros.ros.teach import teach
    teach(client.node, count=5)   # the probe is held at the target view: its newest 5 scored frames become references

The node must be spun by someone (BestViewClient spins its own node; pass `client.node`). Each call waits for
the service's answer and raises TeachError with the node's message when the call fails.
"""

from __future__ import annotations

import time
from typing import Any

from rclpy.node import Node
from std_srvs.srv import Trigger
from usiqa_msgs.srv import CaptureReferences

DEFAULT_NODE = "/iqa_node"


class TeachError(RuntimeError):
    """A reference-service call that failed or got no answer."""


def _call(node: Node, srv_type: Any, name: str, request: Any, timeout: float) -> Any:
    client: Any = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TeachError(f"service {name} not available within {timeout:g} s (is iqa_node running?)")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():  # the node is spun elsewhere (BestViewClient's thread or the caller's executor)
            if time.monotonic() > deadline:
                raise TeachError(f"service {name}: no answer within {timeout:g} s")
            time.sleep(0.01)
        response = future.result()
    finally:
        node.destroy_client(client)
    if response is None or not response.success:
        raise TeachError(f"{name}: {response.message if response is not None else 'no response'}")
    return response


def teach(node: Node, count: int = 5, server: str = DEFAULT_NODE, timeout: float = 10.0) -> Any:
    """Add the newest `count` scored frames as reference views; returns the response (added, set_size)."""
    return _call(
        node, CaptureReferences, f"{server}/capture_reference", CaptureReferences.Request(count=count), timeout
    )


def clear_references(node: Node, server: str = DEFAULT_NODE, timeout: float = 10.0) -> Any:
    return _call(node, Trigger, f"{server}/clear_references", Trigger.Request(), timeout)


def save_references(node: Node, server: str = DEFAULT_NODE, timeout: float = 30.0) -> Any:
    """Write the set atomically into the node's reference_dir (reloaded at the next configure)."""
    return _call(node, Trigger, f"{server}/save_references", Trigger.Request(), timeout)
