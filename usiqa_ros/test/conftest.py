"""Shared fixtures. ROS tests use real rclpy in this process (nodes spun by a MultiThreadedExecutor in a
background thread) on a private ROS domain, so concurrent test runs on one machine do not hear each other."""

from __future__ import annotations

import os
import random

# Before rclpy is imported anywhere: a random domain per test session, discovery on this host only.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 99)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PKG = Path(__file__).resolve().parents[1]  # the usiqa_ros ROS package
REPO = PKG.parent  # the repository root
REAL_US = Path(os.environ.get("USIQA_REAL_US", REPO.parent / "shared" / "data" / "real_us"))


@pytest.fixture(scope="session")
def real_us() -> Path:
    if not (REAL_US / "manifest.csv").exists():
        pytest.fail(f"real ultrasound data not found at {REAL_US} (set USIQA_REAL_US)")
    return REAL_US


@pytest.fixture(scope="session")
def ros():
    """rclpy initialised once for the session."""
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()
