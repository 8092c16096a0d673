"""Best-view benchmark: probe_sim rendering rate, cancel latency of the best_view_search action, and the
node's scoring rate with and without a running goal (starvation check).

    .venv/bin/python -m benchmarks.best_view_bench [--cancels 15] [--out benchmarks/results/best_view.json]

Cancel latency twice: in the server, from its cancel callback to the goal's CANCELED state (what "honoured"
means), and at the client, from sending the cancel request to receiving the result (two service round trips
and executor scheduling on top).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import stats_ms

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_facts() -> dict:
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def bench_render(n: int = 150) -> dict:
    from sensor_msgs.msg import Image

    from usiqa_ros.ros.convert import array_to_image
    from usiqa_ros.tools.phantom import Phantom, sweep_pose

    ph = Phantom()
    for i in range(5):
        ph.render(sweep_pose(i * 0.1))
    render, tick = [], []
    for i in range(n):
        t0 = time.perf_counter()
        frame = ph.render(sweep_pose(i * 0.08))
        t1 = time.perf_counter()
        array_to_image(frame.image, Image)
        t2 = time.perf_counter()
        render.append(t1 - t0)
        tick.append(t2 - t0)
    med = float(np.median(tick))
    return {
        "frames": n,
        "image": f"{ph.cfg.width}x{ph.cfg.height}",
        "render_ms": stats_ms(render),
        "render_plus_msg_ms": stats_ms(tick),
        "fps_median": round(1.0 / med, 1),
        "fps_target": 15,
        "ratio_to_target": round(1.0 / med / 15, 2),
    }


def bench_action(cancels: int, rate: float = 8.0, window: float = 4.0, rounds: int = 3) -> dict:
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from usiqa_msgs.msg import QualityScore

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "usiqa_ros" / "test"))
    from ros_helpers import Spinner, image_msg, sample_frames

    from usiqa_ros.ros.best_view_client import BestViewClient
    from usiqa_ros.ros.iqa_node import IqaNode

    rclpy.init()
    ns = "/bv_bench"
    node = IqaNode("iqa", namespace=ns, parameter_overrides=[Parameter("qos_reliability", value="reliable")])
    spin_node = Spinner(node)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    peer = Node("bench_peer", namespace=ns)
    pub = peer.create_publisher(Image, "image", 10)
    arrivals: list[float] = []
    peer.create_subscription(QualityScore, "quality", lambda m: arrivals.append(time.monotonic()), 100)
    spin_peer = Spinner(peer)
    client = BestViewClient(node=peer, action_name=f"{ns}/best_view_search", server_timeout=20)
    frames = sample_frames(8)
    stop = threading.Event()

    def stream() -> None:
        i, nxt = 0, time.monotonic()
        while not stop.is_set():
            # stamped now: the server ignores frames stamped before a goal's acceptance (min_stamp)
            pub.publish(image_msg(frames[i % len(frames)], peer.get_clock().now().nanoseconds))
            i += 1
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))

    th = threading.Thread(target=stream, daemon=True)
    th.start()
    try:
        while len(arrivals) < 5:
            time.sleep(0.05)
        cancel_s, accept_s = [], []
        for _ in range(cancels):
            t0 = time.monotonic()
            search = client.start(target_score=0.0, timeout=30.0)
            accept_s.append(time.monotonic() - t0)
            time.sleep(0.3)
            t1 = time.monotonic()
            search.cancel()
            search.result(timeout=5)
            cancel_s.append(time.monotonic() - t1)

        def count(t0: float, t1: float) -> int:
            return sum(t0 <= t < t1 for t in list(arrivals))

        idle, busy = [], []
        for _ in range(rounds):  # interleaved: idle window, then a window with a goal running
            t0 = time.monotonic()
            time.sleep(window)
            idle.append(count(t0, t0 + window) / window)
            search = client.start(target_score=0.0, timeout=window + 0.2)
            t1 = time.monotonic()
            search.result(timeout=window + 10)
            busy.append(count(t1, t1 + window) / window)
    finally:
        stop.set()
        th.join()
        client.close()
        spin_peer.stop()
        peer.destroy_node()
        server_cancel_s = list(node._best_view.cancel_latencies)
        node._stop()
        spin_node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return {
        "publish_rate_hz": rate,
        "goal_accept_ms": stats_ms(accept_s),
        "server_cancel_to_canceled_ms": stats_ms(server_cancel_s),
        "cancel_to_result_ms": stats_ms(cancel_s),
        "cancel_target_ms": 100,
        "scores_per_s_idle": [round(v, 2) for v in idle],
        "scores_per_s_with_goal": [round(v, 2) for v in busy],
        "ratio_with_goal_to_idle": round(float(np.sum(busy) / max(np.sum(idle), 1e-9)), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cancels", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "best_view.json"))
    args = ap.parse_args(argv)
    out = {
        "command": "python -m benchmarks.best_view_bench " + " ".join(argv or sys.argv[1:]),
        "machine": machine_facts(),
        "load_average_start": load_average(),
        "render": bench_render(),
        "action": bench_action(args.cancels),
        "load_average_end": load_average(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
