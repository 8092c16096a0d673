"""How much of the [0, 1] range each model's score uses on the held-out frames of benchmarks.quality.

    .venv/bin/python -m benchmarks.score_spread --models A.safetensors B.safetensors ... --out-json OUT

Clean frames and their degraded copies (the same seeded variants as benchmarks.quality): the spread of the clean
scores and the median drop a degradation causes. Made to check weight averages ("soups"): averaging runs whose new
layers started from different initialisations keeps much of the ranking but collapses the score to one value.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import write_json
from benchmarks.quality import score_all, score_spread, variants
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, load_rows, quality_split
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints ('' = the bundled one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    _, eval_rows = quality_split(load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us"))
    frames = [variants(load_gray(r.path), args.seed, i) for i, r in enumerate(eval_rows)]
    out: dict = {
        "command": "python -m benchmarks.score_spread " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_eval_frames": len(frames),
    }
    for path in args.models:
        engine = Engine(EngineConfig(model_path=path, backend="eager", num_threads=1, warmup_iterations=1))
        t0 = time.monotonic()
        scores = score_all(lambda xs, e=engine: [s.score for s in e.score(xs)], frames, ["clean", *FAMILIES])
        out[engine.model_id] = {"path": path or "bundled", **score_spread(scores)}
        print(engine.model_id, out[engine.model_id], f"{time.monotonic() - t0:.0f} s", flush=True)
    write_json(args.out_json, out)


if __name__ == "__main__":
    main()
