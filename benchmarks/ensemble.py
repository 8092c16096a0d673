"""Would averaging the SCORES of several runs of the recipe (not their weights) give a better score?

    .venv/bin/python -m benchmarks.ensemble --name E --models A.safetensors B.safetensors ... --work runs/ensemble

The held-out pairs of benchmarks.quality (same seeded variants) and the hip frames, scored by each model once
(cached per model in --work as .npz, resumable) and by the mean of the members' scores. A weight average of runs
from different starts collapses the score towards one value (benchmarks.score_spread); a score average cannot,
but costs one forward pass per member (blocks 0-4 are frozen at the same ImageNet weights in every run of the
recipe, so a shared trunk would only repeat blocks 5-6 and the head). A diagnostic: nothing here is bundled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_json
from benchmarks.quality import (
    CONSISTENCY,
    DARK,
    held_out_rows,
    hip_frames,
    score_all,
    score_spread,
    summarise,
    variants,
)
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig


def member_scores(path: str, frames: list[dict[str, np.ndarray]], hip: list[np.ndarray], work: Path) -> dict:
    """Scores of one checkpoint on every variant and hip frame, cached by its model id."""
    engine = Engine(EngineConfig(model_path=path, backend="eager", num_threads=1, warmup_iterations=1))
    cache = work / f"scores_{engine.model_id.replace('@', '_')}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files} | {"model_id": engine.model_id}
    t0 = time.monotonic()
    keys = ["clean", *FAMILIES, *CONSISTENCY, *DARK]
    out = score_all(lambda xs: [s.score for s in engine.score(xs)], frames, keys)
    out["hip"] = np.array([s.score for s in engine.score(hip)])
    np.savez(cache, **out)
    print(f"{engine.model_id}: scored in {time.monotonic() - t0:.0f} s", flush=True)
    return out | {"model_id": engine.model_id}


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints ('' = the bundled one)")
    ap.add_argument("--work", default="runs/ensemble")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    eval_rows = held_out_rows()
    frames = [variants(load_gray(r.path), args.seed, i) for i, r in enumerate(eval_rows)]
    hip_rows, y = hip_frames(eval_rows)
    members = [member_scores(p, frames, [load_gray(r.path) for r in hip_rows], work) for p in args.models]
    mean = {k: np.mean([m[k] for m in members], axis=0) for k in members[0] if k != "model_id"}

    def report(s: dict[str, np.ndarray]) -> dict:
        res = summarise(s, list(FAMILIES))
        res["score_spread"] = score_spread(s)
        res["hip_zero_shot_auc"] = float(roc_auc_score(y, s["hip"]))
        return res

    out = {
        "command": "python -m benchmarks.ensemble " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_eval_frames": len(frames),
        "n_hip": {"standard": int(y.sum()), "substandard": int((1 - y).sum())},
        "members": {m["model_id"]: report(m) for m in members},
        "ensemble": {"name": args.name, "members": [m["model_id"] for m in members], **report(mean)},
    }
    write_json(args.out_json, out)
    for mid, r in [*out["members"].items(), (args.name, out["ensemble"])]:
        d = r["dark_region"]
        print(
            f"{mid}: mean {r['families_mean']:.3f} min {r['families_min']:.3f} dark {d['dark_haze']:.3f} / "
            f"{d['dark_noise']:.3f} flip {r['consistency_median_abs']['flip']:.3f} "
            f"std {r['score_spread']['clean_std']:.3f} hip {r['hip_zero_shot_auc']:.3f}"
        )


if __name__ == "__main__":
    main()
