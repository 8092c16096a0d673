"""Stage 1 of benchmarks/results/quality_regional_rule.txt: recipe A (the bundled cache) against recipe B (the same
with the training-only `regional` artefact), from the short runs of benchmarks.quality, two training seeds each.

    python -m benchmarks.regional_gate   -> benchmarks/results/quality_regional_stage1.json

The runs themselves (3 min each; `--lofo-part k/2` for two processes):
    python -m benchmarks.quality --skip-baselines --train-work runs/default_model_f5 --work runs/quality_lofo300
    python -m benchmarks.quality --skip-baselines --train-work runs/regional --extra-families regional \\
        --work runs/lofoB --lofo-runs in_distribution,without_noise_uncorrelated,...  (every family)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import run_path
from usiqa_ros.core.data.degrade import FAMILIES

GATED = ("shadow", "clutter", "compression", "tgc")  # the families that fail left out (the rule's stage 1)
SEEDS = (1, 2)


def run_file(work: Path, name: str, seed: int) -> dict | None:
    """A short run's result as benchmarks.quality cached it, or None when that run was not made."""
    path = run_path(work, name, seed)
    return json.loads(path.read_text()) if path.exists() else None


def recipe(work: Path) -> dict:
    runs = {}
    for seed in SEEDS:
        ind = run_file(work, "in_distribution", seed)
        if ind is None:
            raise SystemExit(f"{work}: no in-distribution run for seed {seed}")
        left = {f: r["families"][f] for f in FAMILIES if (r := run_file(work, f"without_{f}", seed)) is not None}
        runs[str(seed)] = {
            "in_distribution": {k: ind[k] for k in ("families_mean", "families_min", "dark_region")},
            "left_out": left,
        }
    mean = {
        f: float(np.mean([r["left_out"][f] for r in runs.values()]))
        for f in FAMILIES
        if all(f in r["left_out"] for r in runs.values())
    }
    return {
        "runs_by_seed": runs,
        "left_out_seed_mean": mean,
        "left_out_gated_mean": float(np.mean([mean[f] for f in GATED])),
        "left_out_all_mean": float(np.mean(list(mean.values()))) if len(mean) == len(FAMILIES) else None,
        "in_distribution_mean": float(np.mean([r["in_distribution"]["families_mean"] for r in runs.values()])),
        "dark_region": {
            d: float(np.mean([r["in_distribution"]["dark_region"][d] for r in runs.values()]))
            for d in ("dark_haze", "dark_noise")
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", default="runs/quality_lofo300", help="work dir of recipe A's short runs")
    ap.add_argument("--b", default="runs/lofoB", help="work dir of recipe B's short runs")
    ap.add_argument("--out-json", default=str(RESULTS / "quality_regional_stage1.json"))
    args = ap.parse_args(argv)
    a, b = recipe(Path(args.a)), recipe(Path(args.b))
    gain = b["left_out_gated_mean"] - a["left_out_gated_mean"]
    ind = b["in_distribution_mean"] - a["in_distribution_mean"]
    dark = {d: b["dark_region"][d] - a["dark_region"][d] for d in a["dark_region"]}
    verdict = {
        "a_gated_left_out_gain": gain,
        "b_in_distribution_mean_change": ind,
        "c_dark_region_change": dark,
        "passes": bool(gain >= 0.03 and ind >= -0.01 and min(dark.values()) >= -0.02),
    }
    res = {
        "rule": "benchmarks/results/quality_regional_rule.txt",
        "command": "python -m benchmarks.regional_gate " + " ".join(sys.argv[1:] if argv is None else argv),
        "recipe_a": a,
        "recipe_b_regional": b,
        "stage1": verdict,
    }
    write_json(args.out_json, res)
    print(json.dumps(verdict, indent=1))


if __name__ == "__main__":
    main()
