"""Shared harness of the flood and soak benchmarks: iqa_node in its own process, frames published into it.

The node runs as `python -m usiqa_ros.ros.iqa_node` (its real main(): autostart, MultiThreadedExecutor), so its
resident memory (RSS, via psutil) is measured alone. Frames are published either from this process
(`publishers=0`, a paced rclpy loop: enough for 30 fps) or from `publishers` separate processes that publish
pre-built messages (only the stamp and frame_id change per frame), so a flood is not limited by this process's
Python (issue 12: the in-process loop reached only 64-97 fps). This process records every QualityScore:
node-reported latency (receipt -> publish), end-to-end latency (stamp -> reception here, same host clock),
recency (how many frames behind the newest published one the scored frame was) and the frames the node
received (scored + frames_skipped of each score).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@dataclass
class Sample:
    t: float  # seconds since the stream started
    rss_mb: float
    published: int
    scored: int
    latency_ms: list[float] = field(default_factory=list)  # node-reported, scores received in this interval
    e2e_ms: list[float] = field(default_factory=list)
    lag_frames: list[int] = field(default_factory=list)
    load1: float = 0.0  # machine load average (1 min): other jobs share the CPU
    node_cpu_ms_per_scored: float | None = None  # node process CPU time / frames scored in the interval


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope per minute of (seconds, value) points."""
    if len(points) < 3:
        return None
    t, v = np.asarray(points, dtype=float).T
    return round(float(np.polyfit(t / 60.0, v, 1)[0]), 3)


def _pct(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 2) if v else None


def _qos(reliability: str):  # noqa: ANN202 - rclpy imported lazily
    from rclpy.qos import qos_profile_sensor_data

    return qos_profile_sensor_data if reliability == "best_effort" else 10


def _publisher_process(
    index: int,
    count: int,
    topic: str,
    frames: list[np.ndarray],
    encoding: str,
    fps: float,
    duration_s: float,
    reliability: str,
    ready,  # noqa: ANN001 - multiprocessing primitives
    start_at,  # noqa: ANN001
    newest,  # noqa: ANN001
    published,  # noqa: ANN001
) -> None:
    """One of `count` flood publishers: slots index, index + count, ... of a `fps` schedule from `start_at`."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from usiqa_ros.core.convert import array_to_image

    rclpy.init()
    node = Node(f"flood_publisher_{index}")
    pub = node.create_publisher(Image, topic, _qos(reliability))
    msgs = [array_to_image(f, Image, encoding) for f in frames]  # built once: per frame only stamp and frame_id
    t0 = time.monotonic()
    while pub.get_subscription_count() == 0 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    ready.set()
    while start_at.value == 0.0:
        time.sleep(0.001)
    start, k = start_at.value, 0
    try:
        while True:
            target = start + (index + k * count) / fps  # wall-clock schedule (time.time, shared by all processes)
            if target - start >= duration_s or time.time() - start >= duration_s:  # behind schedule: no overrun
                break
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
            seq = index + k * count
            m = msgs[seq % len(msgs)]
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            m.header.frame_id = str(seq)
            pub.publish(m)
            newest[index] = seq
            k += 1
            published[index] = k
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def run_stream(
    name: str,
    frames: list,
    encoding: str,
    fps: float,
    duration_s: float,
    sample_every_s: float,
    node_params: dict[str, str] | None = None,
    reliability: str = "best_effort",
    warmup_s: float = 10.0,
    publishers: int = 0,
) -> dict:
    """Publish `frames` (cycled) at `fps` for `duration_s` into a fresh iqa_node process; return the record.

    publishers = 0: from this process (paced loop); N > 0: from N processes with pre-built messages."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import psutil
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from usiqa_msgs.msg import QualityScore

    from usiqa_ros.core.convert import array_to_image

    topic = f"/{name}/image"
    params = {"image_topic": topic, "quality_topic": f"/{name}/quality", **(node_params or {})}
    cmd = [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    log_path = Path(tempfile.gettempdir()) / f"usiqa_{name}_node.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    ps = psutil.Process(proc.pid)
    rclpy.init()
    node = Node(f"{name}_bench")
    lock = threading.Lock()
    ctx = mp.get_context("spawn")
    n_pub = max(1, publishers)
    newest = ctx.Array("q", [-1] * n_pub, lock=False)  # newest frame id published, per publisher
    published = ctx.Array("q", [0] * n_pub, lock=False)
    seq = [0]  # in-process mode
    cur = Sample(0.0, 0.0, 0, 0)
    node_received = [0]  # frames the node received while we listened: scored + frames_skipped of each score

    def newest_id() -> int:
        return max(newest) if publishers else seq[0]

    def on_score(m: QualityScore) -> None:
        now_ns = time.time_ns()
        with lock:
            cur.scored += 1
            node_received[0] += 1 + m.frames_skipped
            cur.latency_ms.append(m.latency.sec * 1e3 + m.latency.nanosec / 1e6)
            cur.e2e_ms.append((now_ns - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e6)
            cur.lag_frames.append(newest_id() - int(m.header.frame_id))

    node.create_subscription(QualityScore, f"/{name}/quality", on_score, 100)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    samples: list[Sample] = []
    workers: list = []
    pub = None
    i = 0
    load_start = round(os.getloadavg()[0], 2)
    try:
        t0 = time.monotonic()
        while node.count_subscribers(topic) == 0 or node.count_publishers(f"/{name}/quality") == 0:
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(f"iqa_node did not come up (exit {proc.poll()}); see {log_path}")
            time.sleep(0.1)
        if publishers:
            start_at = ctx.Value("d", 0.0, lock=False)
            ready = [ctx.Event() for _ in range(publishers)]
            for k in range(publishers):
                args = (k, publishers, topic, frames, encoding, fps, duration_s, reliability, ready[k], start_at)
                workers.append(ctx.Process(target=_publisher_process, args=(*args, newest, published), daemon=True))
                workers[-1].start()
            for ev in ready:
                if not ev.wait(300):
                    raise RuntimeError("a publisher process did not start")
        else:
            pub = node.create_publisher(Image, topic, _qos(reliability))
            msgs = [array_to_image(f, Image, encoding) for f in frames]
        time.sleep(1.0)
        rss0 = ps.memory_info().rss / 2**20
        with lock:
            node_received[0] = 0
        start = time.monotonic()
        if publishers:
            start_at.value = time.time() + 0.2
            start += 0.2
        next_sample = start + sample_every_s
        cpu_prev = sum(ps.cpu_times()[:2])
        period = 1.0 / fps
        while True:
            now = time.monotonic()
            if now - start >= duration_s:
                break
            if publishers:
                time.sleep(max(0.0, min(next_sample, start + duration_s) - now))
                i = sum(published)
            else:
                target = start + i * period
                if now < target:
                    time.sleep(target - now)
                m = msgs[i % len(msgs)]
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                m.header.frame_id = str(i)
                with lock:
                    seq[0] = i
                pub.publish(m)
                i += 1
            if time.monotonic() >= next_sample:
                with lock:
                    s = Sample(
                        round(time.monotonic() - start, 2),
                        round(ps.memory_info().rss / 2**20, 1),
                        i,
                        cur.scored,
                        list(cur.latency_ms),
                        list(cur.e2e_ms),
                        list(cur.lag_frames),
                    )
                    cur.scored, cur.latency_ms, cur.e2e_ms, cur.lag_frames = 0, [], [], []
                cpu = sum(ps.cpu_times()[:2])
                s.load1 = round(os.getloadavg()[0], 2)
                s.node_cpu_ms_per_scored = round((cpu - cpu_prev) * 1e3 / s.scored, 1) if s.scored else None
                cpu_prev = cpu
                samples.append(s)
                next_sample += sample_every_s
        elapsed = time.monotonic() - start
        for w in workers:
            w.join(30)
        if publishers:
            i = sum(published)
        time.sleep(1.0)
        alive = proc.poll() is None
        rss_end = ps.memory_info().rss / 2**20 if alive else float("nan")
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    lat = [v for s in samples for v in s.latency_ms]
    e2e = [v for s in samples for v in s.e2e_ms]
    lag = [v for s in samples for v in s.lag_frames]
    scored = sum(s.scored for s in samples)
    warm = next((s.rss_mb for s in samples if s.t >= warmup_s), None)
    return {
        "published": i,
        "published_fps": round(i / elapsed, 1),
        "target_fps": fps,
        "publisher_processes": publishers,
        "node_received": node_received[0],
        "node_received_fps": round(node_received[0] / elapsed, 1),
        "duration_s": round(elapsed, 1),
        "scored": scored,
        "scored_per_s": round(scored / elapsed, 2),
        "node_alive_at_end": alive,
        "node_exit_code_after_sigterm": proc.returncode,
        "rss_start_mb": round(rss0, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_max_mb": max((s.rss_mb for s in samples), default=None),
        "rss_growth_mb": round(rss_end - rss0, 1),
        # from the first sample at or after `warmup_s` of streaming: buffers sized by the first frames excluded
        "rss_after_warmup_mb": warm,
        "rss_growth_after_warmup_mb": round(rss_end - warm, 1) if warm is not None else None,
        "warmup_s": warmup_s,
        "rss_slope_mb_per_min_after_warmup": _slope([(s.t, s.rss_mb) for s in samples if s.t >= warmup_s]),
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "max": _pct(lat, 100)},
        "e2e_latency_ms": {"p50": _pct(e2e, 50), "p95": _pct(e2e, 95), "max": _pct(e2e, 100)},
        "lag_frames": {"p50": _pct(lag, 50), "p95": _pct(lag, 95), "max": _pct(lag, 100)},
        "lag_slope_frames_per_min_after_warmup": _slope(
            [(s.t, float(np.median(s.lag_frames))) for s in samples if s.t >= warmup_s and s.lag_frames]
        ),
        "load1_start": load_start,
        "load1_end": round(os.getloadavg()[0], 2),
        "samples": [
            {
                "t": s.t,
                "rss_mb": s.rss_mb,
                "published": s.published,
                "scored": s.scored,
                "latency_p50_ms": _pct(s.latency_ms, 50),
                "latency_p95_ms": _pct(s.latency_ms, 95),
                "e2e_p95_ms": _pct(s.e2e_ms, 95),
                "lag_p50_frames": _pct(s.lag_frames, 50),
                "load1": s.load1,
                "node_cpu_ms_per_scored": s.node_cpu_ms_per_scored,
            }
            for s in samples
        ],
        "node_command": " ".join(cmd),
        "cpu_count": os.cpu_count(),
        "note": "2-core machine shared with other jobs; figures are what this run measured",
    }


def write_result(name: str, record: dict) -> Path:
    """Atomic write of benchmarks/results/<name>.json (temp file + rename)."""
    from usiqa_ros.core.safe_io import atomic_write_text

    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
