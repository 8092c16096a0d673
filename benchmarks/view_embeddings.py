"""Which embedding should reference views compare? Pooling variants of the bundled model's feature maps, on three
view tasks:

    .venv/bin/python -m benchmarks.view_embeddings [--model CKPT] [--out benchmarks/results/view_embeddings.json]

- phantom: 5 seeds, 90 frames of one probe_sim sweep ranked by the distance (CRL-UIQA top-5 rule) to 15 taught
  frames (3 poses off the sweep path, other speckle): Spearman against the phantom's truth and the truth
  percentile of the nearest frame (as `best_view_bench --only offline`, distance instead of the node's score).
- hip: standard vs substandard Graf planes (13 vs 15 real frames), grouped 2-fold CV x 25 (benchmarks.hip_views).
- anatomy: real_us frames of lung, breast, fetal head and hip; references = up to 10 frames of one anatomy from
  half of its groups; AUC of that anatomy's other groups against every other anatomy; 20 splits, mean over the
  four anatomies.

Variants: `product` (USQNet.view_embedding, what the node compares), `descriptor` (the 8,256-d second-order
descriptor the grade head reads: the first view embedding) and the global average of the trunk's blocks 4, 5, 6
(the last stage) or of the head convolution's map, raw, L2-normalised, power-normalised (signed square root, then
L2) or sign-normalised (sign, then L2). `--model` with an ImageNet-only checkpoint measures the untrained blocks.
The product's embedding is `block6_l2` of ImageNet's blocks (a frozen copy beside the fine-tuned trunk); the
anatomy task was added after that choice, as a check it did not see.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from benchmarks.common import write_json
from benchmarks.hip_views import REAL_US, grouped_folds
from usiqa_ros.core.metrics import srocc

RESULTS = Path(__file__).resolve().parent / "results"
ANATOMIES = ("lung", "breast", "fetal", "hip")


def _variants(maps: dict[str, torch.Tensor], descriptor: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"descriptor": descriptor}
    for name, fm in maps.items():
        g = fm.mean((2, 3))
        out[f"{name}_raw"] = g
        out[f"{name}_l2"] = F.normalize(g, dim=1)
        out[f"{name}_pow"] = F.normalize(torch.sign(g) * g.abs().sqrt(), dim=1)
        out[f"{name}_sign"] = F.normalize(torch.sign(g), dim=1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", default=str(RESULTS / "view_embeddings.json"))
    args = ap.parse_args(argv)

    from usiqa_ros.core.checkpoint import load_checkpoint
    from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch
    from usiqa_ros.core.references import ReferenceFrame, ReferenceSet
    from usiqa_ros.tools.phantom import Phantom, PhantomConfig, sweep_pose, teach_poses

    t0 = time.perf_counter()
    ck = load_checkpoint(args.model or None)
    model = ck.model.eval()
    bb = model.backbone
    if not hasattr(bb, "blocks") or len(bb.blocks) != 7:
        raise SystemExit("this benchmark reads EfficientNet-Lite blocks 4-6: use a usqnet_lite checkpoint")
    pre = PreprocessConfig(input_size=ck.input_size)
    maps: dict[str, torch.Tensor] = {}
    for i in (4, 5, 6):
        bb.blocks[i].register_forward_hook(lambda _m, _i, out, i=i: maps.__setitem__(f"block{i}", out))
    model.global_pool.register_forward_pre_hook(lambda _m, inp: maps.__setitem__("head", inp[0]))

    def embed(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        parts: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for i in range(0, len(frames), 32):
                x = to_batch([preprocess_frame(f, pre) for f in frames[i : i + 32]])
                desc = model.forward_features(x)
                for k, v in _variants(maps, desc).items():
                    parts.setdefault(k, []).append(v)
                parts.setdefault("product", []).append(model.view_embedding(x))
        return {k: torch.cat(v).float().numpy() for k, v in parts.items()}

    def distances(refs: np.ndarray, x: np.ndarray, groups: list[int]) -> np.ndarray:
        return ReferenceSet("m", refs, [ReferenceFrame(group=g) for g in groups], top_k=min(5, len(refs))).distances(x)

    # phantom
    phantom: dict[str, list[tuple[float, float]]] = {}
    for seed in range(5):
        ph = Phantom(PhantomConfig(seed=seed))
        sweep = [ph.render(sweep_pose(t, 12.0)) for t in np.linspace(0, 12.0, 90, endpoint=False)]
        truth = np.array([f.quality for f in sweep])
        e = embed([f.image for f in sweep])
        teacher = Phantom(PhantomConfig(seed=seed + 1000))
        r = embed([teacher.render(p).image for p in teach_poses(3, seed) for _ in range(5)])
        for k in e:
            d = distances(r[k], e[k], [i // 5 for i in range(15)])
            rho = srocc(-d, truth)
            phantom.setdefault(k, []).append((rho, float(100 * np.mean(truth <= truth[int(np.argmin(d))]))))

    # real frames: hip planes and anatomy retrieval
    with open(REAL_US / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kind = [next((a for a in ANATOMIES if a in r["anatomy"]), "") for r in rows]
    rows, kind = [r for r, k in zip(rows, kind, strict=True) if k], [k for k in kind if k]
    real = embed([cv2.imread(str(REAL_US / r["file"]), cv2.IMREAD_UNCHANGED) for r in rows])
    groups = np.array([r["group"] or r["file"] for r in rows])
    anatomy = np.array(kind)
    hip_idx = np.flatnonzero((anatomy == "hip") & np.array([r["label"].startswith("quality=") for r in rows]))
    hip_y = np.array([rows[i]["label"].startswith("quality=standard") for i in hip_idx])
    table = {}
    for k, x in real.items():
        rng = np.random.default_rng(0)
        hip = []
        for _ in range(25):
            fold = grouped_folds(list(groups[hip_idx]), hip_y, rng)
            for f in (0, 1):
                tr, te = (fold != f) & hip_y, fold == f
                d = distances(x[hip_idx[tr]], x[hip_idx[te]], list(range(int(tr.sum()))))
                hip.append(roc_auc_score(hip_y[te], -d))
        rng = np.random.default_rng(0)
        per_anatomy = {}
        for a in ANATOMIES:
            aucs = []
            for _ in range(20):
                ga = rng.permutation(sorted(set(groups[anatomy == a].tolist())))
                ref_groups = ga[: max(1, len(ga) // 2)]
                ref = np.flatnonzero(np.isin(groups, ref_groups))[:10]
                test = ~np.isin(groups, ref_groups)
                aucs.append(roc_auc_score(anatomy[test] == a, -distances(x[ref], x[test], list(range(len(ref))))))
            per_anatomy[a] = round(float(np.mean(aucs)), 3)
        ph_rows = phantom[k]
        table[k] = {
            "dims": int(x.shape[1]),
            "phantom_spearman_median": round(float(np.median([a for a, _ in ph_rows])), 3),
            "phantom_spearman": [round(a, 3) for a, _ in ph_rows],
            "phantom_nearest_percentile_median": round(float(np.median([b for _, b in ph_rows])), 1),
            "hip_auc": round(float(np.mean(hip)), 3),
            "anatomy_auc_mean": round(float(np.mean(list(per_anatomy.values()))), 3),
            "anatomy_auc": per_anatomy,
        }
    out = {
        "command": "python -m benchmarks.view_embeddings " + " ".join(argv or sys.argv[1:]),
        "model_id": ck.model_id,
        "product_embedding": "USQNet.view_embedding: L2-normalised average of the view branch (ImageNet blocks 5-6)"
        if model.view_blocks is not None
        else "USQNet.view_embedding: L2-normalised average of the trunk's last stage",
        "frames": {
            "real": len(rows),
            "hip": len(hip_idx),
            "per_anatomy": {a: int((anatomy == a).sum()) for a in ANATOMIES},
        },
        "variants": table,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(write_json(args.out, out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
