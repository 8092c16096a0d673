"""How much of the [0, 1] range each model's score uses on the held-out frames of benchmarks.quality.

    .venv/bin/python -m benchmarks.score_spread --models A.safetensors B.safetensors ... --out-json OUT

Clean frames and their degraded copies (the same seeded variants as benchmarks.quality): the spread of the clean
scores and the median drop a degradation causes. Made to check weight averages ("soups"): averaging runs whose new
layers started from different initialisations keeps much of the ranking but collapses the score to one value.
Each model is scored by benchmarks.ensemble.member_scores, cached in --work, which that benchmark reuses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import write_json
from benchmarks.ensemble import member_scores
from benchmarks.quality import held_out_rows, hip_frames, score_spread, variants
from usiqa_ros.core.data.synthetic import load_gray


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints ('' = the bundled one)")
    ap.add_argument("--work", default="runs/ensemble", help="per-model score cache (shared with benchmarks.ensemble)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    eval_rows = held_out_rows()
    frames = [variants(load_gray(r.path), args.seed, i) for i, r in enumerate(eval_rows)]
    hip = [load_gray(r.path) for r in hip_frames(eval_rows)[0]]
    out: dict = {
        "command": "python -m benchmarks.score_spread " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_eval_frames": len(frames),
    }
    for path in args.models:
        scores = member_scores(path, frames, hip, work)
        out[scores["model_id"]] = {"path": path or "bundled", **score_spread(scores)}
        print(scores["model_id"], out[scores["model_id"]], flush=True)
    write_json(args.out_json, out)


if __name__ == "__main__":
    main()
