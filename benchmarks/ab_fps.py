"""Batch-1 time of two checkpoints through the node's engine, alternating every pass over 16 real frames, so that a
change of model is not confused with a change of machine load (`lite_fps` times one checkpoint at a time).
Alternating call by call doubled both times here (35.8 against 17.2 ms, ratio unchanged), so it is not done.

    .venv/bin/python -m benchmarks.ab_fps --a <checkpoint> [--b <checkpoint>]   -> benchmarks/results/ab_fps.json
`--b` defaults to the bundled model; the previous bundled one: `git show <rev>:usiqa_ros/usiqa_ros/models/...`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import RESULTS, interleaved, load_average, machine_facts, real_frames, write_json
from usiqa_ros.core.engine import Engine, EngineConfig


def _score_next(engine: Engine, frames: list[np.ndarray]) -> Callable[[], object]:
    """One batch-1 call per invocation, cycling through the frames."""
    cycle = itertools.cycle(frames)
    return lambda: engine.score([next(cycle)])


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
    load0 = load_average()
    times = interleaved({str(i): _score_next(e, frames) for i, e in enumerate(engines)}, args.rounds, len(frames))
    medians = [round(statistics.median(times[str(i)]) * 1e3, 2) for i in range(len(engines))]
    models = [
        {"model_id": e.model_id, "median_ms": m, "calls": len(times[str(i)])}
        for i, (e, m) in enumerate(zip(engines, medians, strict=True))
    ]
    res = {
        "command": "python -m benchmarks.ab_fps " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_facts(),
        "backend": args.backend,
        "models": models,
        "ratio_b_over_a": round(medians[1] / medians[0], 3),
        "load_average": [load0, load_average()],
    }
    print(write_json(args.out, res))


if __name__ == "__main__":
    main()
