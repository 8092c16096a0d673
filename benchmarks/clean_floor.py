"""Does a model's score of CLEAN frames follow their own dark floor? A check of the "brighter is better" leaning.

    .venv/bin/python -m benchmarks.clean_floor --model '' --model runs/prev_438a1663.safetensors
        -> benchmarks/results/clean_floor.json

The floor of a frame is the 10th percentile of its grey levels inside the sector's hull (how dark its darkest
tenth is). On the held-out clean frames of benchmarks.quality (groups never trained on), per source: the mean score,
the median floor and Spearman's rho between floor and score within the source (one anatomy and scanner, so the
floor varies with the patient and settings, not with what is imaged). A score that rises with the floor inside a
source prefers frames whose dark regions are lifted, the leaning that the veil diagnostic (benchmarks.unseen_kinds)
exposes on copies; added 2026-12-02 after a fill-teaching try (results/smooth_fill_rule.txt) lost most on breast
frames, whose clean images have the highest floor. A positive rho is not wrong by itself (a frame with too little
gain has a low floor too, and is worse); it says the floor is one of the cues the score uses on real frames.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import held_out_rows
from usiqa_ros.core.data.degrade import sector_hull
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.core.metrics import srocc


def floor(gray: np.ndarray) -> float:
    """10th percentile of the frame's grey levels inside the sector's hull."""
    hull = sector_hull(gray) > 0
    return float(np.quantile(gray[hull] if hull.any() else gray, 0.1))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None, help="checkpoint ('' = the bundled one); repeatable")
    ap.add_argument("--out", default=str(RESULTS / "clean_floor.json"))
    args = ap.parse_args(argv)
    models = args.model if args.model is not None else [""]
    rows = held_out_rows()
    frames = [load_gray(r.path) for r in rows]
    floors = np.array([floor(f) for f in frames])
    sources = np.array([r.source for r in rows])
    out: dict = {"command": "python -m benchmarks.clean_floor " + " ".join(argv), "n_frames": len(rows), "models": {}}
    for path in models:
        engine = Engine(EngineConfig(model_path=path))
        scores = np.array([engine.score_one(np.round(f * 255).astype(np.uint8)).score for f in frames])
        res: dict = {"pooled_rho": srocc(floors, scores), "by_source": {}}
        for src in sorted(set(sources.tolist())):
            m = sources == src
            res["by_source"][src] = {
                "n": int(m.sum()),
                "mean_score": float(scores[m].mean()),
                "median_floor": float(np.median(floors[m])),
                "rho_floor_score": srocc(floors[m], scores[m]),
            }
        out["models"][engine.model_id] = res
        print(engine.model_id, {k: round(v["rho_floor_score"], 2) for k, v in res["by_source"].items()}, flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main(sys.argv[1:])
