"""Real check of the view score: infant hip frames of the dev set (standard vs substandard Graf plane).

    .venv/bin/python -m benchmarks.hip_views [--repeats 25] [--model CKPT] [--out benchmarks/results/hip_views.json]

Grouped 2-fold cross-validation, repeated: the cases (manifest `group`) are split in two folds stratified by
label; the reference views are the standard planes of the training fold (embedded by the engine's scoring pass,
as the node captures them); the other fold is scored. AUC of standard vs substandard for:
  artifact_score  without references (today's score)
  view_score      likeness to the references (CRL-UIQA top-k rule, calibrated on their leave-one-out distances)
  score           the node's combination with references (core.references.combine)
Issue-11 target: AUC with references >= 0.85.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import write_json

RESULTS = Path(__file__).resolve().parent / "results"
REAL_US = Path(os.environ.get("USIQA_REAL_US", Path(__file__).resolve().parents[2] / "shared" / "data" / "real_us"))


def hip_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if "hip" in r["anatomy"] and r["label"].startswith("quality=")]
    if not rows:
        raise SystemExit(f"no hip rows with quality labels in {root / 'manifest.csv'}")
    return rows


def grouped_folds(groups: list[str], labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fold 0/1 per item: whole groups, each label's groups split in half (stratified)."""
    fold = np.zeros(len(groups), int)
    for lab in (True, False):
        gs = sorted({g for g, y in zip(groups, labels, strict=True) if y == lab})
        chosen = set(rng.permutation(gs)[: len(gs) // 2].tolist())
        for i, g in enumerate(groups):
            if labels[i] == lab and g in chosen:
                fold[i] = 1
    return fold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=25, help="repetitions of the 2-fold split")
    ap.add_argument("--model", default="", help="checkpoint (default: the bundled model)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "hip_views.json"))
    args = ap.parse_args(argv)

    from usiqa_ros.core.engine import Engine, EngineConfig
    from usiqa_ros.core.references import ReferenceFrame, ReferenceSet, combine

    rows = hip_rows(REAL_US)
    labels = np.array([r["label"].startswith("quality=standard") for r in rows])
    groups = [r["group"] or r["file"] for r in rows]
    frames = [cv2.imread(str(REAL_US / r["file"]), cv2.IMREAD_UNCHANGED) for r in rows]
    engine = Engine(EngineConfig(model_path=args.model, backend="eager", device="cpu"))
    t0 = time.perf_counter()
    scored = engine.score(frames)
    artifact = np.array([s.score for s in scored])
    emb = np.stack([s.embedding for s in scored])
    rng = np.random.default_rng(0)
    aucs: dict[str, list[float]] = {"artifact_score": [], "view_score": [], "score": []}
    for _ in range(args.repeats):
        fold = grouped_folds(groups, labels, rng)
        for f in (0, 1):
            train, test = fold != f, fold == f
            ref_idx = np.flatnonzero(train & labels)
            refs = ReferenceSet(
                engine.model_id, emb[ref_idx], [ReferenceFrame(source=rows[i]["file"], group=k) for k, i in enumerate(ref_idx)],
                top_k=args.top_k,
            )  # fmt: skip
            view = refs.view_scores(emb[test])
            comb = np.array([combine(a, v) for a, v in zip(artifact[test], view, strict=True)])
            y = labels[test]
            aucs["artifact_score"].append(roc_auc_score(y, artifact[test]))
            aucs["view_score"].append(roc_auc_score(y, view))
            aucs["score"].append(roc_auc_score(y, comb))
    out = {
        "command": "python -m benchmarks.hip_views " + " ".join(argv or sys.argv[1:]),
        "model_id": engine.model_id,
        "embedding": f"view embedding ({emb.shape[1]} dims, USQNet.forward_with_view: the scoring pass)",
        "frames": {"standard": int(labels.sum()), "substandard": int((~labels).sum())},
        "protocol": f"grouped 2-fold CV stratified by label, {args.repeats} repeats; references = standard frames "
        f"of the training fold (~{int(labels.sum()) // 2}); top_k {args.top_k}",
        "auc_mean": {k: round(float(np.mean(v)), 3) for k, v in aucs.items()},
        "auc_std": {k: round(float(np.std(v)), 3) for k, v in aucs.items()},
        "target": "AUC with references >= 0.85",
        "target_met": bool(max(np.mean(aucs["view_score"]), np.mean(aucs["score"])) >= 0.85),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(write_json(args.out, out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
