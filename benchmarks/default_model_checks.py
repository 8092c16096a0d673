"""Honest checks of the bundled default model on real images, beyond the synthetic held-out pairs:

1. Out-of-domain, real quality labels: infant-hip images graded standard / substandard by two sonographers
   (the only real image-quality labels in the dev set). Reported as the pairwise accuracy over all
   (standard, substandard) pairs (= ROC AUC), plus mean scores. The model never saw these labels.
2. Clean vs heavily degraded copy over the WHOLE dev set, split into frames whose groups were in training and
   held-out groups (the held-out figure is the one to quote).
3. The bundled demo clip: score spread over 48 consecutive frames of a probe held still.

    .venv/bin/python -m benchmarks.default_model_checks   -> benchmarks/results/default_model_checks.json
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import write_json
from usiqa_ros.core.data.degrade import DEGRADATIONS, degrade
from usiqa_ros.core.data.splits import load_split
from usiqa_ros.core.data.synthetic import heavy_severity, load_gray
from usiqa_ros.core.engine import Engine
from usiqa_ros.core.metrics import pairwise_accuracy

REPO = Path(__file__).resolve().parents[1]
REAL_US = REPO.parent / "shared" / "data" / "real_us"
OUT = REPO / "benchmarks" / "results" / "default_model_checks.json"


def scores(engine: Engine, frames: list[np.ndarray]) -> np.ndarray:
    out: list[float] = []
    for i in range(0, len(frames), 16):
        out += [s.score for s in engine.score(frames[i : i + 16])]
    return np.array(out)


def main() -> None:
    engine = Engine()
    rows = list(csv.DictReader(open(REAL_US / "manifest.csv", newline="")))
    split = load_split(engine.model_path.with_name(engine.model_path.stem + ".split.json"))
    held_out = set(split["test"]) | set(split["val"])
    result: dict = {"model_id": engine.model_id, "command": "python -m benchmarks.default_model_checks"}

    hip = [r for r in rows if r["file"].startswith("hip_spj_")]
    hip_scores = scores(engine, [load_gray(REAL_US / r["file"]) for r in hip])
    std = np.array([s for s, r in zip(hip_scores, hip, strict=True) if "quality=standard" in r["label"]])
    sub = np.array([s for s, r in zip(hip_scores, hip, strict=True) if "quality=substandard" in r["label"]])
    better, worse = np.meshgrid(std, sub, indexing="ij")
    result["hip_standard_vs_substandard"] = {
        "n_standard": len(std),
        "n_substandard": len(sub),
        "pairwise_accuracy_auc": pairwise_accuracy(better.ravel(), worse.ravel()),
        "mean_score_standard": float(std.mean()),
        "mean_score_substandard": float(sub.mean()),
        "in_training_set": sum(r["file"] not in held_out for r in hip),
    }

    frames = {r["file"]: load_gray(REAL_US / r["file"]) for r in rows}
    clean = dict(zip(frames, scores(engine, list(frames.values())), strict=True))
    per_kind = {}
    for kind in sorted(DEGRADATIONS):
        rng = np.random.default_rng(123)
        deg = dict(
            zip(frames, scores(engine, [degrade(f, kind, heavy_severity(), rng) for f in frames.values()]), strict=True)
        )
        per_kind[kind] = {
            part: pairwise_accuracy([clean[k] for k in keys], [deg[k] for k in keys])
            for part, keys in (
                ("held_out", [k for k in frames if k in held_out]),
                ("trained", [k for k in frames if k not in held_out]),
            )
        }
    result["clean_vs_heavy_degraded"] = {
        "severity": heavy_severity(),
        "n_held_out": len([k for k in frames if k in held_out]),
        "n_trained": len([k for k in frames if k not in held_out]),
        "per_kind": per_kind,
        "mean_held_out": float(np.mean([v["held_out"] for v in per_kind.values()])),
        "mean_trained": float(np.mean([v["trained"] for v in per_kind.values()])),
    }

    clip = sorted((REPO / "usiqa_ros" / "usiqa_ros" / "sample_frames").glob("*.png"))
    clip_scores = scores(engine, [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in clip])
    result["demo_clip"] = {
        "n": len(clip),
        "mean": float(clip_scores.mean()),
        "std": float(clip_scores.std()),
        "min": float(clip_scores.min()),
        "max": float(clip_scores.max()),
    }
    print(write_json(OUT, result))


if __name__ == "__main__":
    main()
