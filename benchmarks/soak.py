"""Soak: a 30 fps stream of the bundled 370x370 mono8 clip for 10 minutes into iqa_node.

Looks for trends, not levels: RSS and latency are sampled every 10 s and a least-squares line is fitted over
the run after the first minute (warm-up); pass = |RSS slope| < 1 MB/min and latency p50 slope < +1 ms/min (no upward drift).
Prints the figures and writes benchmarks/results/soak.json.

    .venv/bin/python benchmarks/soak.py [--fps 30] [--duration 600]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_harness import REPO, run_stream, write_result  # noqa: E402


def _slope_per_min(t: list[float], v: list[float]) -> float | None:
    if len(t) < 3:
        return None
    return round(float(np.polyfit(np.asarray(t) / 60.0, np.asarray(v), 1)[0]), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--out", default="soak")
    args = ap.parse_args(argv)
    frames = [
        cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        for f in sorted((REPO / "usiqa_ros" / "usiqa_ros" / "sample_frames").glob("*.png"))
    ]
    rec = run_stream("soak", frames, "mono8", args.fps, args.duration, sample_every_s=10.0, warmup_s=60.0)
    steady = [s for s in rec["samples"] if s["t"] >= 60 and s["latency_p50_ms"] is not None]
    t = [s["t"] for s in steady]
    trend = {
        "rss_mb_per_min": _slope_per_min(t, [s["rss_mb"] for s in steady]),
        "latency_p50_ms_per_min": _slope_per_min(t, [s["latency_p50_ms"] for s in steady]),
        "latency_p95_ms_per_min": _slope_per_min(t, [s["latency_p95_ms"] for s in steady]),
        "node_cpu_ms_per_scored_per_min": _slope_per_min(
            [s["t"] for s in steady if s["node_cpu_ms_per_scored"]],
            [s["node_cpu_ms_per_scored"] for s in steady if s["node_cpu_ms_per_scored"]],
        ),
        "machine_load1_per_min": _slope_per_min(t, [s["load1"] for s in steady]),
    }
    ok = {
        "node_alive": rec["node_alive_at_end"],
        "rss_slope_below_1mb_per_min": trend["rss_mb_per_min"] is not None and abs(trend["rss_mb_per_min"]) < 1.0,
        # drift = growing latency; a falling one only means the shared machine got quieter
        "latency_p50_drift_below_1ms_per_min": trend["latency_p50_ms_per_min"] is not None
        and trend["latency_p50_ms_per_min"] < 1.0,
        # the node's own CPU cost per frame does not depend on other jobs: a real drift shows here
        "cpu_per_frame_drift_below_1ms_per_min": trend["node_cpu_ms_per_scored_per_min"] is not None
        and trend["node_cpu_ms_per_scored_per_min"] < 1.0,
    }
    rec = {"command": " ".join(["benchmarks/soak.py", *(argv or sys.argv[1:])]), "trend": trend, "criteria": ok, **rec}
    path = write_result(args.out, rec)
    print(
        f"soak {args.fps} fps mono8 370x370 for {rec['duration_s']} s: published {rec['published']}, "
        f"scored {rec['scored']} ({rec['scored_per_s']}/s)\n"
        f"  RSS {rec['rss_start_mb']} -> {rec['rss_end_mb']} MB, latency ms {rec['latency_ms']}\n"
        f"  trend after 1 min: {trend}\n  criteria {ok}\n  -> {path}"
    )
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
