"""Batch-1 time of two checkpoints through the node's engine, interleaved call by call, so that a change of
model is not confused with a change of machine load (`lite_fps` times one checkpoint at a time).

    .venv/bin/python -m benchmarks.ab_fps --a <checkpoint> [--b <checkpoint>]   -> benchmarks/results/ab_fps.json
`--b` defaults to the bundled model; the previous bundled one: `git show <rev>:usiqa_ros/usiqa_ros/models/...`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.common import RESULTS, real_frames
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.core.safe_io import atomic_write_text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="first checkpoint")
    ap.add_argument("--b", default="", help="second checkpoint (default: the bundled model)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--rounds", type=int, default=8, help="passes over the 16 frames, alternating the checkpoints")
    ap.add_argument("--out", default=str(RESULTS / "ab_fps.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    frames = real_frames(16)
    engines = [
        Engine(EngineConfig(model_path=p, backend=args.backend, num_threads=2, warmup_iterations=3))
        for p in (args.a, args.b)
    ]
    times: list[list[float]] = [[], []]
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        for i, engine in enumerate(engines):
            for f in frames:
                t = time.perf_counter()
                engine.score([f])
                times[i].append((time.perf_counter() - t) * 1e3)
    res: dict = {
        "command": "python -m benchmarks.ab_fps " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": args.backend,
        "models": [
            {"model_id": e.model_id, "median_ms": round(statistics.median(t), 2), "calls": len(t)}
            for e, t in zip(engines, times, strict=True)
        ],
        "load_average": [list(load0), list(os.getloadavg())],
    }
    res["ratio_b_over_a"] = round(res["models"][1]["median_ms"] / res["models"][0]["median_ms"], 3)
    atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
