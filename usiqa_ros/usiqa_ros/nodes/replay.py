"""usiqa-replay: play a bag's image topic into a running iqa_node and measure how it keeps up.

    usiqa-replay BAG [--topic /us/image] [--rate 1.0] [--quality-topic /quality] [--out DIR] [--spawn-node]

Images are published at the recorded pace (bag receive times, scaled by --rate) with their recorded header
stamps, as the serialized bytes stored in the bag. The node's QualityScore output is recorded into a bag.
Scores are matched to images by header stamp, which gives the end-to-end latency (image published -> score
received, one clock) and the accounting `scored + skipped = published`: skipped = frames the node never
scored, split into those it reported in QualityScore.frames_skipped and those lost on the way (transport
drops with best-effort QoS, frames the node rejected, scores still missing at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core import bagio
from usiqa_ros.core.bagio import BagError
from usiqa_ros.core.safe_io import atomic_open
from usiqa_ros.ros.spin import MultiThreadedExecutor


@dataclass
class _Score:
    recv_ns: int  # perf_counter_ns at receipt
    wall_ns: int
    frames_skipped: int
    node_latency_ns: int
    raw: bytes


@dataclass
class ReplayResult:
    topic: str
    published: int = 0
    publish_ns: dict[int, int] = field(default_factory=dict)  # header stamp -> perf_counter_ns at publish
    order: list[int] = field(default_factory=list)  # stamps in publish order
    scores: dict[int, _Score] = field(default_factory=dict)  # header stamp -> first score
    unmatched_scores: int = 0  # scores whose stamp was never published (another publisher on the topic?)
    duplicate_stamps: int = 0
    first_publish_ns: int = 0
    last_publish_ns: int = 0
    recorded_span_ns: int = 0
    rate: float = 1.0


class Replayer(Node):
    """Publishes raw image messages; collects QualityScore messages (raw) keyed by header stamp."""

    def __init__(self, image_topic: str, msgtype: str, quality_topic: str, reliable: bool = True) -> None:
        super().__init__("usiqa_replay")
        cls = CompressedImage if msgtype == bagio.COMPRESSED_TYPE else Image
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.pub = self.create_publisher(cls, image_topic, qos)
        self.quality_topic = quality_topic
        self.result: ReplayResult | None = None
        self.lock = threading.Lock()
        self.last_activity_ns = time.perf_counter_ns()
        self.create_subscription(QualityScore, quality_topic, self._on_score, 100, raw=True)

    def _on_score(self, raw: bytes) -> None:
        now, wall = time.perf_counter_ns(), time.time_ns()
        msg = bagio.typestore().deserialize_cdr(raw, bagio.QUALITY_TYPE)
        stamp = bagio.stamp_ns(msg.header.stamp)
        lat = bagio.stamp_ns(msg.latency)  # a rosbags message (raw subscription): sec + nanosec, as a stamp
        with self.lock:
            self.last_activity_ns = now
            r = self.result
            if r is None:
                return
            if stamp not in r.publish_ns:
                r.unmatched_scores += 1
            elif stamp not in r.scores:
                r.scores[stamp] = _Score(now, wall, int(msg.frames_skipped), lat, bytes(raw))

    def accounted(self) -> bool:
        with self.lock:
            r = self.result
            skipped = sum(s.frames_skipped for s in r.scores.values())
            return len(r.scores) + skipped >= r.published


def wait_for_node(rep: Replayer, timeout_s: float) -> None:
    """Until a subscriber listens to the image topic and a publisher serves the quality topic."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rep.pub.get_subscription_count() > 0 and rep.count_publishers(rep.quality_topic) > 0:
            time.sleep(0.3)  # let both endpoints finish matching
            return
        time.sleep(0.05)
    raise BagError(
        f"no node subscribed to {rep.pub.topic_name} and publishing {rep.quality_topic} within {timeout_s:g} s "
        "(is iqa_node running with those topics? try --spawn-node)"
    )


def replay_into(
    rep: Replayer, bag: str | Path, topic: str, rate: float = 1.0, drain_s: float = 5.0, max_frames: int = 0
) -> ReplayResult:
    """Publish the bag's `topic` through `rep` (its node must be spinning) and wait for the scores."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    res = ReplayResult(topic=topic, rate=rate)
    with rep.lock:
        rep.result = res
    with bagio.open_bag(bag) as reader:
        if not reader.is2:
            raise BagError("replay needs a rosbag2 bag (ROS 1 messages are not CDR)")
        t_bag0 = t_wall0 = None
        for im in bagio.iter_images(reader, topic):
            if max_frames and im.index >= max_frames:
                break
            if t_bag0 is None:
                t_bag0, t_wall0 = im.log_ns, time.perf_counter_ns() + 50_000_000
            target = t_wall0 + (im.log_ns - t_bag0) / rate
            delay = (target - time.perf_counter_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            now = time.perf_counter_ns()
            with rep.lock:
                if im.stamp_ns in res.publish_ns:
                    res.duplicate_stamps += 1
                res.publish_ns.setdefault(im.stamp_ns, now)
                res.order.append(im.stamp_ns)
                res.published += 1
                rep.last_activity_ns = now
            rep.pub.publish(bytes(im.raw))
            res.recorded_span_ns = im.log_ns - t_bag0
        if res.published == 0:
            raise BagError(f"topic {topic!r} has no messages (empty bag)")
        res.first_publish_ns = min(res.publish_ns.values())
        res.last_publish_ns = now
    while not rep.accounted():
        with rep.lock:
            idle = (time.perf_counter_ns() - rep.last_activity_ns) / 1e9
        if idle > drain_s:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # a score in flight for a frame already counted as skipped is harmless; collect it
    return res


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 2) if len(a) else None


def report(res: ReplayResult) -> dict:
    """Accounting, latency percentiles and throughput of a replay."""
    scored = len(res.scores)
    reported_skipped = sum(s.frames_skipped for s in res.scores.values())
    never = res.published - scored
    e2e = np.array([(s.recv_ns - res.publish_ns[k]) / 1e6 for k, s in res.scores.items()])
    node = np.array([s.node_latency_ns / 1e6 for s in res.scores.values()])
    last = max((s.recv_ns for s in res.scores.values()), default=res.last_publish_ns)
    span = (last - res.first_publish_ns) / 1e9
    pub_span = (res.last_publish_ns - res.first_publish_ns) / 1e9
    rec_fps = (res.published - 1) / (res.recorded_span_ns / 1e9) if res.recorded_span_ns > 0 else None
    return {
        "topic": res.topic,
        "rate": res.rate,
        "published": res.published,
        "scored": scored,
        "skipped": never,
        "skipped_reported_by_node": reported_skipped,
        "lost_or_rejected": never - reported_skipped,
        "scored_share": round(scored / res.published, 4) if res.published else None,
        "unmatched_scores": res.unmatched_scores,
        "duplicate_stamps": res.duplicate_stamps,
        "latency_ms": {"p50": _pct(e2e, 50), "p95": _pct(e2e, 95), "p99": _pct(e2e, 99), "max": _pct(e2e, 100)},
        "node_latency_ms": {"p50": _pct(node, 50), "p95": _pct(node, 95), "p99": _pct(node, 99)},
        "recorded_fps": round(rec_fps, 2) if rec_fps else None,
        "published_fps": round((res.published - 1) / pub_span, 2) if pub_span > 0 else None,
        "scored_fps": round(scored / span, 2) if span > 0 else None,
    }


def report_text(r: dict) -> str:
    lat, nl = r["latency_ms"], r["node_latency_ms"]
    return (
        f"published {r['published']} frames on {r['topic']} at {r['published_fps']} fps "
        f"(recorded {r['recorded_fps']} fps x rate {r['rate']:g})\n"
        f"scored {r['scored']} ({100 * (r['scored_share'] or 0):.1f} %), skipped {r['skipped']} "
        f"(reported by the node {r['skipped_reported_by_node']}, lost or rejected {r['lost_or_rejected']}); "
        f"scored + skipped = {r['scored'] + r['skipped']} = published\n"
        f"end-to-end latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms (node-internal p50 "
        f"{nl['p50']} ms, p95 {nl['p95']} ms); throughput {r['scored_fps']} scored frames/s"
    )


def write_outputs(
    res: ReplayResult, rep: dict, out: Path, storage: str = "sqlite3", quality_topic: str = "/quality"
) -> None:
    """scores_bag/ (QualityScore as received, bag time = receipt), latency.csv, replay.json; all atomic."""
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "scores_bag"
    if bag.exists():
        raise BagError(f"{bag} exists already; not overwriting")
    with bagio.atomic_bag(bag, storage) as w:
        conn = bagio.add_quality_connection(w, quality_topic)
        for s in sorted(res.scores.values(), key=lambda s: s.wall_ns):
            w.write(conn, s.wall_ns, s.raw)
        w.set_custom_data("usiqa.replay", json.dumps({"rate": res.rate, "topic": res.topic}))
    with atomic_open(out / "latency.csv", "w") as f:
        f.write("publish_index,stamp_ns,scored,latency_ms,node_latency_ms,frames_skipped\n")
        for i, k in enumerate(res.order):
            s = res.scores.get(k)
            if s is None:
                f.write(f"{i},{k},0,,,\n")
            else:
                e2e = (s.recv_ns - res.publish_ns[k]) / 1e6
                f.write(f"{i},{k},1,{e2e:.3f},{s.node_latency_ns / 1e6:.3f},{s.frames_skipped}\n")
    with atomic_open(out / "replay.json", "w") as f:
        json.dump(rep | {"scores_bag": str(bag)}, f, indent=2)
        f.write("\n")


def spawn_node(image_topic: str, quality_topic: str, extra: Sequence[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args"]
    cmd += ["-p", f"image_topic:={image_topic}", "-p", f"quality_topic:={quality_topic}", *extra]
    return subprocess.Popen(cmd, env=os.environ.copy())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="usiqa-replay", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    ap.add_argument("--topic", help="image topic in the bag (default: the only one)")
    ap.add_argument("--publish-topic", help="topic to publish on (default: the bag's topic name)")
    ap.add_argument("--quality-topic", default="/quality", help="the node's QualityScore topic")
    ap.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)")
    ap.add_argument("--best-effort", action="store_true", help="publish best effort (default reliable)")
    ap.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the node to appear")
    ap.add_argument("--drain", type=float, default=5.0, help="seconds without news before giving up on scores")
    ap.add_argument("--out", help="output folder (default: ./<bag name>_replay)")
    ap.add_argument("--bag-storage", choices=sorted(bagio.STORAGES), default="sqlite3")
    ap.add_argument("--spawn-node", action="store_true", help="start iqa_node for the replay (reliable QoS)")
    ap.add_argument("--node-arg", action="append", default=[], help="extra --ros-args item for --spawn-node")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out) if a.out else Path.cwd() / f"{Path(a.bag).name}_replay"
    try:
        with bagio.open_bag(a.bag) as reader:
            topic, msgtype = bagio.pick_image_topic(reader, a.topic)
            if bagio.topics(reader)[topic][1] == 0:
                raise BagError(f"topic {topic!r} has no messages (empty bag)")
        if (out / "scores_bag").exists():
            raise BagError(f"{out / 'scores_bag'} exists already; choose another --out")
    except BagError as e:
        print(f"usiqa-replay: error: {e}", file=sys.stderr)
        return 1
    pub_topic = a.publish_topic or topic
    node_proc = None
    if a.spawn_node:
        extra = ["-p", "qos_reliability:=reliable", *(x for arg in a.node_arg for x in ("-p", arg))]
        node_proc = spawn_node(pub_topic, a.quality_topic, extra)
    rclpy.init()
    rep = Replayer(pub_topic, msgtype, a.quality_topic, reliable=not a.best_effort)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(rep)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    code = 0
    try:
        wait_for_node(rep, a.wait + (60.0 if node_proc else 0.0))
        res = replay_into(rep, a.bag, topic, a.rate, a.drain, a.max_frames)
        r = report(res)
        write_outputs(res, r, out, a.bag_storage, a.quality_topic)
        print(report_text(r))
        print(f"scores bag and report in {out}")
    except (BagError, ValueError, OSError) as e:
        print(f"usiqa-replay: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        executor.shutdown(timeout_sec=2.0)
        rep.destroy_node()
        rclpy.try_shutdown()
        if node_proc is not None:
            node_proc.terminate()
            try:
                node_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node_proc.kill()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
