"""Flood: 1920x1080 rgb8 frames at 200 fps for 60 s into iqa_node (best effort, SensorDataQoS).

Pass criteria (issue 7): the node stays alive, keeps scoring recent frames, RSS growth < 50 MB, latency
bounded. Prints the figures and writes benchmarks/results/flood.json.

    .venv/bin/python benchmarks/flood.py [--fps 200] [--duration 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_harness import REPO, run_stream, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--out", default="flood")
    args = ap.parse_args(argv)
    frames = []
    for f in sorted((REPO / "usiqa_ros" / "usiqa_ros" / "sample_frames").glob("*.png"))[:4]:
        gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        frames.append(cv2.cvtColor(cv2.resize(gray, (args.width, args.height)), cv2.COLOR_GRAY2RGB))
    rec = run_stream("flood", frames, "rgb8", args.fps, args.duration, sample_every_s=1.0)
    ok = {
        "node_alive": rec["node_alive_at_end"],
        "scores_every_second": all(s["scored"] > 0 for s in rec["samples"][1:]),
        "rss_growth_below_50mb": rec["rss_growth_after_warmup_mb"] is not None
        and rec["rss_growth_after_warmup_mb"] < 50,
        "latency_p95_below_1s": (rec["latency_ms"]["p95"] or 1e9) < 1000,
        "lag_p95_below_fps": (rec["lag_frames"]["p95"] or 1e9) < args.fps,  # scored frames are < 1 s old
    }
    rec = {"command": " ".join(["benchmarks/flood.py", *(argv or sys.argv[1:])]), "criteria": ok, **rec}
    path = write_result(args.out, rec)
    print(
        f"flood {args.width}x{args.height} rgb8: published {rec['published']} frames at {rec['published_fps']} fps "
        f"(target {args.fps}) for {rec['duration_s']} s; scored {rec['scored']} ({rec['scored_per_s']}/s)\n"
        f"  node alive: {rec['node_alive_at_end']}, RSS {rec['rss_start_mb']} -> {rec['rss_end_mb']} MB "
        f"(growth {rec['rss_growth_mb']} MB from idle, {rec['rss_growth_after_warmup_mb']} MB after "
        f"{rec['warmup_s']} s warm-up, max {rec['rss_max_mb']} MB, "
        f"trend {rec['rss_slope_mb_per_min_after_warmup']} MB/min)\n"
        f"  latency receipt->publish ms {rec['latency_ms']}, end-to-end ms {rec['e2e_latency_ms']}\n"
        f"  scored frame lag (frames behind newest) {rec['lag_frames']}\n  criteria {ok}\n  -> {path}"
    )
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
