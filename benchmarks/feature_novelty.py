"""Which artefact families does a score that never saw a degradation catch? A training-free probe.

    .venv/bin/python -m benchmarks.feature_novelty   -> benchmarks/results/feature_novelty.json

The score: minus the Mahalanobis distance (Ledoit-Wolf covariance) of a frame's ImageNet EfficientNet-Lite0
feature statistics (per-channel mean and standard deviation after each block) to those of clean permissive
training frames. No degraded image is used, so every family is "left out"; on the same held-out pairs as
benchmarks.quality (its `variants`), it shows which families differ from clean ultrasound in generic feature
statistics, and which look like plausible anatomy that only a model taught the family can catch (README
"Leave-one-family-out").

Why not a score component, measured on training data only (`absolute` in the JSON): it fails exactly where the
trained model's left-out runs fail (shadow, clutter, TGC), and a node sees one frame, not a clean twin, so the
distance would have to mean something on its own. It does not: clean frames of an anatomy the fit has not seen
(each training source left out in turn) lie as far from the fit as degraded copies of anatomy it has seen
(held-out groups), so any threshold that spares new anatomy misses most artefacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import DARK, variants
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, Row, load_rows, quality_split
from usiqa_ros.core.data.degrade import FAMILIES, degrade
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.metrics import pairwise_accuracy
from usiqa_ros.core.model import USQNet, build_model
from usiqa_ros.core.model.pretrained import load_imagenet_backbone
from usiqa_ros.core.model.usqnet import PRESETS
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame

ABSOLUTE_BLOCK = 4  # the best block for the pairwise test, and the bundled model's frozen trunk (blocks 0-4)


def block_statistics(model: USQNet, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Per block 1..6: N x 2C (channel means, channel standard deviations) of the ImageNet backbone's output."""
    cfg, backbone = model.config, model.backbone
    pre = PreprocessConfig(input_size=cfg.input_size)
    x = torch.from_numpy(np.stack([preprocess_frame(f, pre) for f in frames])).expand(-1, 3, -1, -1)
    out = []
    with torch.inference_mode():
        h = backbone.bn1(backbone.conv_stem((x - cfg.input_mean) / cfg.input_std))  # the preset's normalisation
        for k, block in enumerate(backbone.blocks):
            h = block(h)
            if k >= 1:
                out.append(torch.cat([h.mean((2, 3)), h.std((2, 3))], 1).numpy())
    return out


def absolute_use(
    model: USQNet, train: list[Row], stats: np.ndarray, block: int, seed: int, n_frames: int
) -> dict[str, Any]:
    """Can the distance flag a bad frame on its own? Distances of clean frames of an unseen anatomy (one
    training source left out of the fit) against those of degraded copies of unseen groups of fitted anatomy."""
    src = np.array([r.source for r in train])
    rng = np.random.default_rng(seed)
    groups = sorted({r.group for r in train})
    held = set(rng.choice(groups, len(groups) // 5, replace=False).tolist())
    in_held = np.array([r.group in held for r in train])
    pct = (50, 95, 99)
    res: dict[str, Any] = {"block": f"block{block}", "percentiles": list(pct), "source_left_out": {}}
    for s in sorted(set(src)):
        mu, sd, lw = fit_statistics(stats[src != s])
        left_out = np.sqrt(lw.mahalanobis((stats[src == s] - mu) / sd))
        res["source_left_out"][s] = {"n": int((src == s).sum()), "distance": np.percentile(left_out, pct).tolist()}
    mu, sd, lw = fit_statistics(stats[~in_held])
    new_anatomy = min(v["distance"][0] for v in res["source_left_out"].values())  # the closest unseen anatomy
    picked = rng.choice(np.nonzero(in_held)[0], min(n_frames, int(in_held.sum())), replace=False)
    dist: dict[str, list[float]] = {k: [] for k in ["clean", *FAMILIES]}
    for j, i in enumerate(picked):
        img = load_gray(train[i].path)
        ims = [img] + [
            degrade(img, f, float(rng.uniform(0.3, 1.0)), np.random.default_rng((seed, j, k)))
            for k, f in enumerate(FAMILIES)
        ]
        for k, d in zip(dist, lw.mahalanobis((block_statistics(model, ims)[block - 1] - mu) / sd), strict=True):
            dist[k].append(float(np.sqrt(d)))
    clean_p99 = float(np.percentile(dist["clean"], 99))
    res["held_out_groups"] = {
        "n_frames": len(picked),
        "clean_distance": np.percentile(dist["clean"], pct).tolist(),
        "degraded_above_clean_p99": {f: float(np.mean(np.array(dist[f]) > clean_p99)) for f in FAMILIES},
        "degraded_above_new_anatomy_median": {f: float(np.mean(np.array(dist[f]) > new_anatomy)) for f in FAMILIES},
    }
    res["new_anatomy_median"] = new_anatomy
    return res


def fit_statistics(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, LedoitWolf]:
    mu, sd = d.mean(0), d.std(0) + 1e-6
    return mu, sd, LedoitWolf().fit((d - mu) / sd)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fit-frames", type=int, default=1200, help="clean training frames (random) to fit on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--absolute-frames", type=int, default=60, help="held-out-group training frames degraded")
    ap.add_argument("--out-json", default=str(RESULTS / "feature_novelty.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    model = build_model(replace(PRESETS["usqnet_lite"](), input_size=args.size))
    load_imagenet_backbone(model.backbone, model.config.backbone)
    model.eval()
    train, evaluation = quality_split(load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us"))
    rng = np.random.default_rng(args.seed)
    fit_idx = rng.choice(len(train), min(args.fit_frames, len(train)), replace=False)
    stats: list[list[np.ndarray]] = []
    for i in range(0, len(train), 32):
        stats.append(block_statistics(model, [load_gray(r.path) for r in train[i : i + 32]]))
    per_block = [np.concatenate(s) for s in zip(*stats, strict=True)]
    fits = [fit_statistics(d[fit_idx]) for d in per_block]
    keys = ["clean", *FAMILIES, *DARK]
    scores = {k: np.full((len(fits), len(evaluation)), np.nan) for k in keys}
    for i, r in enumerate(evaluation):
        v = variants(load_gray(r.path), args.seed, i)  # the same variants as benchmarks.quality
        present = [k for k in keys if k in v]
        for b, (d, (mu, sd, lw)) in enumerate(zip(block_statistics(model, [v[k] for k in present]), fits, strict=True)):
            for k, m in zip(present, lw.mahalanobis((d - mu) / sd), strict=True):
                scores[k][b, i] = -np.sqrt(m)
    res: dict[str, Any] = {
        "command": "python -m benchmarks.feature_novelty " + " ".join(argv if argv is not None else sys.argv[1:]),
        "score": "-Mahalanobis distance (Ledoit-Wolf) of per-channel mean/std after an ImageNet EfficientNet-Lite0 "
        f"block to {len(fit_idx)} clean permissive training frames; input {args.size} px",
        "n_eval_frames": len(evaluation),
        "blocks": {},
    }
    for b in range(len(fits)):
        fam = {f: pairwise_accuracy(scores["clean"][b], scores[f][b]) for f in FAMILIES}
        ok = ~np.isnan(scores[DARK[0]][b])
        res["blocks"][f"block{b + 1}"] = {
            "families": fam,
            "families_mean": float(np.mean(list(fam.values()))),
            "families_min": float(min(fam.values())),
            "dark_region": {d: pairwise_accuracy(scores["clean"][b][ok], scores[d][b][ok]) for d in DARK},
        }
    res["absolute"] = absolute_use(
        model, train, per_block[ABSOLUTE_BLOCK - 1], ABSOLUTE_BLOCK, args.seed, args.absolute_frames
    )
    res["seconds"] = round(time.monotonic() - t0)
    write_json(args.out_json, res)
    for name, r in res["blocks"].items():
        print(name, " ".join(f"{f}={a:.3f}" for f, a in r["families"].items()), f"mean {r['families_mean']:.3f}")
    print(json.dumps(res["absolute"], indent=1))


if __name__ == "__main__":
    main()
