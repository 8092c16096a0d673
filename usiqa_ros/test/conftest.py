"""Shared fixtures. ROS tests use real rclpy in this process (nodes spun by a MultiThreadedExecutor in a
background thread) on a private ROS domain, so concurrent test runs on one machine do not hear each other."""

from __future__ import annotations

import importlib.abc
import os
import random
import sys

# Before rclpy is imported anywhere: a random domain per test session, discovery on this host only.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 99)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PKG = Path(__file__).resolve().parents[1]  # the usiqa_ros ROS package
REPO = PKG.parent  # the repository root
REAL_US = Path(os.environ.get("USIQA_REAL_US", REPO.parent / "shared" / "data" / "real_us"))


# CI (.ci/run) sets USIQA_STRICT=1: a test that would skip for a missing resource (the dev data in ../shared,
# the ROS underlay) fails instead, so CI always runs everything. A bare clone skips those tests with the reason.
STRICT = os.environ.get("USIQA_STRICT", "") not in ("", "0")


def require(condition: bool, reason: str) -> None:
    """Skip the calling test with `reason` when `condition` is false (fail instead under USIQA_STRICT=1)."""
    if not condition:
        if STRICT:
            pytest.fail(f"{reason} (required: USIQA_STRICT=1)")
        pytest.skip(reason)


# `make test-humble` (USIQA_NO_ROS=1): Python 3.10 with Ubuntu 22.04's numpy, OpenCV and SciPy, and no ROS (PyPI has
# no Humble rclpy). Importing a ROS package there skips the test, or the whole file for a top-level import, so the
# rest runs against the oldest libraries a Humble user has. A missing ROS package anywhere else stays an error.
NO_ROS = os.environ.get("USIQA_NO_ROS", "") not in ("", "0")
ROS_PACKAGES = frozenset(
    "rclpy launch launch_ros ros2launch tf2_ros ament_index_python usiqa_msgs sensor_msgs std_msgs std_srvs "
    "geometry_msgs diagnostic_msgs lifecycle_msgs rcl_interfaces builtin_interfaces action_msgs rosgraph_msgs".split()
)


class _SkipRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in ROS_PACKAGES:
            raise pytest.skip.Exception(f"needs ROS ({name}); USIQA_NO_ROS=1", allow_module_level=True)


if NO_ROS:
    sys.meta_path.insert(0, _SkipRos())


@pytest.fixture(scope="session")
def real_us() -> Path:
    require((REAL_US / "manifest.csv").exists(), f"dev data not found at {REAL_US} (set USIQA_REAL_US)")
    return REAL_US


@pytest.fixture(scope="session")
def ros():
    """rclpy initialised once for the session."""
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()
