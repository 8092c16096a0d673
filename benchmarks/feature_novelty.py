"""Which artefact families does a score that never saw a degradation catch? A training-free probe.

    .venv/bin/python -m benchmarks.feature_novelty   -> benchmarks/results/feature_novelty.json

The score: minus the Mahalanobis distance (Ledoit-Wolf covariance) of a frame's ImageNet EfficientNet-Lite0
feature statistics (per-channel mean and standard deviation after each block) to those of clean permissive
training frames. No degraded image is used, so every family is "left out"; on the same held-out pairs as
benchmarks.quality (its `variants`), it shows which families differ from clean ultrasound in generic feature
statistics, and which look like plausible anatomy that only a model taught the family can catch (README
"Leave-one-family-out"). Why not a score component: it fails exactly where the trained model's left-out runs
fail (shadow, clutter, TGC), so it adds nothing there.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import DARK, variants
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, load_rows, quality_split
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.metrics import pairwise_accuracy
from usiqa_ros.core.model import USQNet, build_model
from usiqa_ros.core.model.pretrained import load_imagenet_backbone
from usiqa_ros.core.model.usqnet import PRESETS
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fit-frames", type=int, default=1200, help="clean training frames (random) to fit on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=str(RESULTS / "feature_novelty.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    model = build_model(replace(PRESETS["usqnet_lite"](), input_size=args.size))
    load_imagenet_backbone(model.backbone, model.config.backbone)
    model.eval()
    train, evaluation = quality_split(load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us"))
    rng = np.random.default_rng(args.seed)
    fit_rows = [train[i] for i in rng.choice(len(train), min(args.fit_frames, len(train)), replace=False)]
    stats: list[list[np.ndarray]] = []
    for i in range(0, len(fit_rows), 32):
        stats.append(block_statistics(model, [load_gray(r.path) for r in fit_rows[i : i + 32]]))
    per_block = [np.concatenate(s) for s in zip(*stats, strict=True)]
    fits = []
    for d in per_block:
        mu, sd = d.mean(0), d.std(0) + 1e-6
        fits.append((mu, sd, LedoitWolf().fit((d - mu) / sd)))
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
        f"block to {len(fit_rows)} clean permissive training frames; input {args.size} px",
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
    res["seconds"] = round(time.monotonic() - t0)
    write_json(args.out_json, res)
    for name, r in res["blocks"].items():
        print(name, " ".join(f"{f}={a:.3f}" for f, a in r["families"].items()), f"mean {r['families_mean']:.3f}")


if __name__ == "__main__":
    main()
