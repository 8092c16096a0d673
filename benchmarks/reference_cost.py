"""Extra cost of the view score per frame: 500 reference views vs the frame's inference.

    .venv/bin/python -m benchmarks.reference_cost [--references 500] [--iterations 200] [--backend auto]

Per iteration, interleaved: one frame scored by the engine (preprocess + forward pass, which also yields the
embedding), then the view score of that embedding against the set (the node's extra work per frame). Medians
and their ratio; issue-11 target: extra <= 10 % of the frame's inference time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--references", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--model", default="")
    ap.add_argument("--out", default=str(RESULTS / "reference_cost.json"))
    args = ap.parse_args(argv)

    from usiqa_ros.core.engine import Engine, EngineConfig
    from usiqa_ros.core.references import ReferenceFrame, ReferenceSet
    from usiqa_ros.tools.phantom import Phantom, sweep_pose

    engine = Engine(EngineConfig(model_path=args.model, backend=args.backend, device="cpu"))
    ph = Phantom()
    frames = [ph.render(sweep_pose(t)).image for t in np.linspace(0, 12, 24, endpoint=False)]
    seeds = np.stack([s.embedding for s in engine.score(frames)])
    rng = np.random.default_rng(0)
    n = args.references
    emb = seeds[rng.integers(0, len(seeds), n)] * (1 + 0.05 * rng.standard_normal((n, seeds.shape[1])))
    refs = ReferenceSet(engine.model_id, emb, [ReferenceFrame(group=i // 5) for i in range(n)])
    infer, view = [], []
    load0 = [round(v, 2) for v in os.getloadavg()]
    for i in range(args.iterations):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        s = engine.score_one(f)
        t1 = time.perf_counter()
        refs.view_scores(s.embedding)
        t2 = time.perf_counter()
        infer.append(t1 - t0)
        view.append(t2 - t1)
    mi, mv = float(np.median(infer)), float(np.median(view))
    out = {
        "command": "python -m benchmarks.reference_cost " + " ".join(argv or sys.argv[1:]),
        "model_id": engine.model_id,
        "backend": engine.backend.describe(),
        "references": n,
        "embedding_dims": int(seeds.shape[1]),
        "iterations": args.iterations,
        "inference_ms_median": round(mi * 1e3, 3),
        "view_score_ms_median": round(mv * 1e3, 3),
        "view_score_ms_p95": round(float(np.percentile(view, 95)) * 1e3, 3),
        "extra_fraction": round(mv / mi, 4),
        "target": "extra <= 0.10 of the frame's inference time",
        "target_met": mv / mi <= 0.10,
        "load_average_start": load0,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
