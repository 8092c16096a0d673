"""Cost of the annotated image (iqa_node parameter debug_image, topic <quality_topic>/image): drawing the grade,
score and score bar (ros/annotate.annotate) plus building the bgr8 Image message (convert.array_to_image), per
frame, for the frame sizes a probe sends. It runs on the node's worker thread after the score is published (so
it does not delay that score) and only while someone subscribes; with nobody subscribed the cost is one
get_subscription_count() call. Writes benchmarks/results/annotate_cost.json.

    .venv/bin/python benchmarks/annotate_cost.py [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_harness import REPO, write_result  # noqa: E402


def _stats(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3)}


def main(argv: list[str] | None = None) -> int:
    from sensor_msgs.msg import Image

    from usiqa_ros.core.convert import array_to_image
    from usiqa_ros.core.engine import Engine, EngineConfig
    from usiqa_ros.ros.annotate import annotate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args(argv)
    gray = cv2.imread(str(sorted((REPO / "usiqa_ros" / "usiqa_ros" / "sample_frames").glob("*.png"))[0]), 0)
    frames = {
        "370x370 mono8 (sample clip)": gray,
        "640x480 mono8": cv2.resize(gray, (640, 480)),
        "1920x1080 bgr8": cv2.cvtColor(cv2.resize(gray, (1920, 1080)), cv2.COLOR_GRAY2BGR),
    }
    engine = Engine(EngineConfig(device="cpu", backend="auto"))  # as the node (auto = ONNX Runtime on a CPU)
    rows = {}
    load_start = round(os.getloadavg()[0], 2)
    for name, frame in frames.items():
        draw, total, score = [], [], []
        for i in range(args.calls):
            t0 = time.perf_counter()
            img = annotate(frame, 0.5 + 0.4 * np.sin(i), 1 + i % 5)
            t1 = time.perf_counter()
            array_to_image(img, Image, "bgr8")
            t2 = time.perf_counter()
            draw.append((t1 - t0) * 1e3)
            total.append((t2 - t0) * 1e3)
        for _ in range(max(20, args.calls // 10)):
            t0 = time.perf_counter()
            engine.score_one(frame)
            score.append((time.perf_counter() - t0) * 1e3)
        rows[name] = {
            "annotate_ms": _stats(draw),
            "annotate_and_message_ms": _stats(total),
            "score_one_ms": _stats(score),
            "share_of_scoring_p50": round(float(np.median(total) / np.median(score)), 3),
        }
        print(
            f"{name:28s} draw {rows[name]['annotate_ms']} ms, + message {rows[name]['annotate_and_message_ms']} ms; "
            f"scoring the frame {rows[name]['score_one_ms']} ms -> {100 * rows[name]['share_of_scoring_p50']:.1f} %"
        )
    rec = {
        "command": " ".join(["benchmarks/annotate_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "calls": args.calls,
        "model": engine.model_id,
        "backend": engine.backend.describe(),
        "frames": rows,
        "load1_start": load_start,
        "load1_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "note": "2-core machine shared with other jobs; figures are what this run measured",
    }
    print(f"-> {write_result('annotate_cost', rec)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
