"""Sections 2 (node overhead) and 3 (stream): the real iqa_node in its own process, a real rclpy probe here.

The node runs as `python -m usiqa_ros.ros.iqa_node` (its own main(): autostart, its executor), as on a robot.
This process publishes 640 x 480 mono8 frames and receives usiqa_msgs/QualityScore. Latency is measured here,
publish() call -> score callback, on one clock, so it includes serialisation, DDS transport both ways, the
node's conversion, preprocessing, inference and publishing. The bare engine runs `Engine.score_one` on the same
decoded frame in this process (preprocessing included in both), interleaved with the node measurements.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, stats_ms

log = logging.getLogger(__name__)


def ros_env() -> None:
    """A private ROS domain on this host only, before rclpy starts (inherited by the node process)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@dataclass
class Received:
    recv_ns: int
    frame_id: str
    latency_ns: int  # node-reported receipt -> publish
    frames_skipped: int


@dataclass
class Probe:
    """Publisher of frames and collector of scores (rclpy node spun on a background thread)."""

    name: str
    reliable: bool = False
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from usiqa_msgs.msg import QualityScore

        if not rclpy.ok():
            rclpy.init()
        self.node = Node(f"{self.name}_probe")
        self.image_topic, self.quality_topic = f"/{self.name}/image", f"/{self.name}/quality"
        self.pub = self.node.create_publisher(Image, self.image_topic, 10 if self.reliable else qos_profile_sensor_data)
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.node.create_subscription(QualityScore, self.quality_topic, self._on_score, 100)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_score(self, m) -> None:
        r = Received(
            time.perf_counter_ns(), m.header.frame_id, m.latency.sec * 10**9 + m.latency.nanosec, m.frames_skipped
        )
        with self.lock:
            self.received.append(r)
        self.event.set()

    def connected(self) -> bool:
        return self.pub.get_subscription_count() > 0 and self.node.count_publishers(self.quality_topic) > 0

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()


@contextmanager
def node_process(name: str, params: dict[str, object]) -> Iterator[tuple[subprocess.Popen, Path, float]]:
    """iqa_node in its own process; yields (process, log file, spawn time from time.perf_counter)."""
    args = {"image_topic": f"/{name}/image", "quality_topic": f"/{name}/quality", **params}
    cmd = [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args"]
    for k, v in args.items():
        v = str(v).lower() if isinstance(v, bool) else v
        cmd += ["-p", f"{k}:={v}"]
    log_path = Path(tempfile.mkstemp(prefix=f"{name}_", suffix=".log")[1])
    with open(log_path, "w") as logf:
        t_spawn = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            yield proc, log_path, t_spawn
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def image_message(frame: np.ndarray):
    from sensor_msgs.msg import Image

    from usiqa_ros.core.convert import array_to_image

    msg = array_to_image(frame, Image, "mono8")
    msg.header.frame_id = "0"
    return msg


def _stamp(msg, i: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
    msg.header.frame_id = str(i)


def start_and_first_score(probe: Probe, proc: subprocess.Popen, log_path: Path, t_spawn: float, msg) -> dict:
    """Spawn -> first QualityScore received, publishing a frame every 50 ms until one is scored."""
    deadline = time.monotonic() + 180
    i = 0
    while not probe.received:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iqa_node gave no score (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
        if probe.pub.get_subscription_count() > 0:
            _stamp(msg, -1 - i)
            probe.pub.publish(msg)
            i += 1
        probe.event.wait(0.05)
    first = probe.received[0]
    return {
        "spawn_to_first_score_s": round((first.recv_ns / 1e9) - t_spawn, 2),
        "first_score_node_latency_ms": round(first.latency_ns / 1e6, 2),
        "node_log_ready_line": next((ln for ln in log_path.read_text().splitlines() if "ready in" in ln), ""),
    }


def request_reply(probe: Probe, msg, i: int, timeout: float = 5.0) -> tuple[float, float] | None:
    """Publish one frame and wait for its score: (end-to-end s, node-reported s), None if it was lost."""
    probe.event.clear()
    n0 = len(probe.received)
    _stamp(msg, i)
    t0 = time.perf_counter_ns()
    probe.pub.publish(msg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe.event.wait(0.5)
        probe.event.clear()
        with probe.lock:
            hit = next((r for r in probe.received[n0:] if r.frame_id == str(i)), None)
        if hit is not None:
            return (hit.recv_ns - t0) / 1e9, hit.latency_ns / 1e9
    return None


def node_overhead(
    name: str, params: dict[str, object], engine_cfg, frame: np.ndarray, rounds: int, per_round: int
) -> dict:
    """Publish -> score latency of the node process over bare `Engine.score_one` on the same frame."""
    from usiqa_ros.core.engine import Engine

    ros_env()
    probe = Probe(name, reliable=params.get("qos_reliability") == "reliable")
    msg = image_message(frame)
    try:
        with node_process(name, params) as (proc, log_path, t_spawn):
            startup = start_and_first_score(probe, proc, log_path, t_spawn, msg)
            engine = Engine(engine_cfg)
            e2e, in_node, bare, lost = [], [], [], 0
            for _ in range(3):  # warm both paths
                request_reply(probe, msg, 0)
                engine.score_one(frame)
            i = 1
            for _ in range(rounds):
                for _ in range(per_round):
                    r = request_reply(probe, msg, i)
                    i += 1
                    if r is None:
                        lost += 1
                        continue
                    e2e.append(r[0])
                    in_node.append(r[1])
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    engine.score_one(frame)
                    bare.append(time.perf_counter() - t0)
            backend = engine.backend.describe()
    finally:
        probe.close()
    e2e_s, node_s, bare_s = stats_ms(e2e), stats_ms(in_node), stats_ms(bare)
    return {
        "params": params,
        "engine_backend": backend,
        "preprocessing": "included in both (node: bytes -> numpy -> preprocess -> forward; bare: score_one(frame))",
        "frame": f"{frame.shape[1]}x{frame.shape[0]} mono8",
        "end_to_end_ms": e2e_s,
        "node_reported_ms": node_s,
        "bare_engine_ms": bare_s,
        "lost": lost,
        "node_overhead_ratio": round(e2e_s["median"] / bare_s["median"], 3),
        # Least disturbed by other jobs: the fastest node round trip over the fastest bare call.
        "node_overhead_ratio_of_minima": round(e2e_s["min"] / bare_s["min"], 3),
        "in_node_ratio": round(node_s["median"] / bare_s["median"], 3),
        "startup": startup,
    }


def stream(
    name: str, params: dict[str, object], frames: list[np.ndarray], fps: float, seconds: float, window_s: float = 10.0
) -> dict:
    """`fps` frames/s for `seconds` through the node: scored fps, skipped share, latency, RSS, latency growth."""
    import psutil

    ros_env()
    probe = Probe(name, reliable=params.get("qos_reliability") == "reliable")
    msgs = [image_message(f) for f in frames]
    try:
        with node_process(name, params) as (proc, log_path, t_spawn):
            ps = psutil.Process(proc.pid)
            startup = start_and_first_score(probe, proc, log_path, t_spawn, msgs[0])
            time.sleep(0.5)
            with probe.lock:
                probe.received.clear()
            rss0 = ps.memory_info().rss / 2**20
            sent_ns: dict[str, int] = {}
            period = 1.0 / fps
            start = time.perf_counter()
            i = 0
            while (now := time.perf_counter()) - start < seconds:
                target = start + i * period
                if now < target:
                    time.sleep(target - now)
                m = msgs[i % len(msgs)]
                _stamp(m, i)
                sent_ns[str(i)] = time.perf_counter_ns()
                probe.pub.publish(m)
                i += 1
            elapsed = time.perf_counter() - start
            time.sleep(1.0)
            rss1 = ps.memory_info().rss / 2**20
            cpu = ps.cpu_times()
    finally:
        probe.close()
    got = [r for r in probe.received if r.frame_id in sent_ns]
    start_ns = min(sent_ns.values())
    t_rel = np.array([(sent_ns[r.frame_id] - start_ns) / 1e9 for r in got])
    lat = np.array([(r.recv_ns - sent_ns[r.frame_id]) / 1e9 for r in got])
    first = lat[t_rel < window_s]
    last = lat[t_rel >= seconds - window_s]
    s = stats_ms(lat)
    skipped_reported = sum(r.frames_skipped for r in got)
    return {
        "params": params,
        "target_fps": fps,
        "duration_s": round(elapsed, 1),
        "published": i,
        "published_fps": round(i / elapsed, 2),
        "scored": len(got),
        "scored_fps": round(len(got) / elapsed, 2),
        "skipped_share": round(1 - len(got) / i, 4),
        "skipped_reported_by_node": skipped_reported,
        "lost_in_transport": i - len(got) - skipped_reported,
        "latency_ms": s,
        "latency_p99_over_median": round(s["p99"] / s["median"], 3) if s["n"] else None,
        "latency_first_window_median_ms": round(float(np.median(first)) * 1e3, 2) if first.size else None,
        "latency_last_window_median_ms": round(float(np.median(last)) * 1e3, 2) if last.size else None,
        "latency_growth_last_over_first": (
            round(float(np.median(last) / np.median(first)), 3) if first.size and last.size else None
        ),
        "rss_start_mb": round(rss0, 1),
        "rss_end_mb": round(rss1, 1),
        "node_cpu_s": round(cpu.user + cpu.system, 1),
        "startup": startup,
    }
