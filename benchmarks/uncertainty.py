"""How precise are the headline figures? Grouped bootstrap intervals for benchmarks.quality's held-out figures.

    .venv/bin/python -m benchmarks.uncertainty --model '' --model runs/prev_438a1663.safetensors
        -> benchmarks/results/uncertainty.json
    .venv/bin/python -m benchmarks.uncertainty --model '' --flip-mean --out benchmarks/results/tta_flip.json
        (the mean over each frame and its mirror, paired against the single view: results/tta_flip_rule.txt)

The figures of `quality.json` (pairwise accuracy per family, the dark-region tests, the hip zero-shot AUC) rest on
219 held-out frames (28 for hip), and the targets of issue 10 are read against them to the second decimal. This
module scores the same copies with the same engine settings as benchmarks.quality (its `variants`, seed 0; eager,
1 thread), checks that the point figures equal the ones in `quality.json` when the model is the one that file
scored, and resamples the evaluation's GROUPS (patients/videos) with replacement within each source, so the mix of
anatomies stays as evaluated: the 2.5th and 97.5th percentiles of 2,000 resamples are the 95 % interval, and the
share of resamples at or above a target says how far a figure is from it. With a second model, the same resamples
give paired intervals of the difference (second minus first) per figure, which is what "better on 11 of 13
families" needs. The minimum over families of a resample is biased low (a minimum of noisy figures), and the
intervals do not cover the draw of the copies' random artefacts or of the training run (seeds: the short runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks import quality
from benchmarks.common import RESULTS, write_json
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig

TARGET = 0.95
FIGURES = (*FAMILIES, *quality.DARK)


def resample_counts(frames: Sequence[tuple[str, str]], n_boot: int, seed: int) -> np.ndarray:
    """n_boot x len(frames) multiplicities of the frames, given as (source, group): each resample draws, within each
    source, as many groups as the source has, with replacement, and takes every frame of a drawn group."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(frames)))
    for src in sorted({s for s, _ in frames}):
        groups: dict[str, list[int]] = {}
        for i, (s, g) in enumerate(frames):
            if s == src:
                groups.setdefault(g, []).append(i)
        members = [groups[g] for g in sorted(groups)]
        drawn = rng.integers(0, len(members), size=(n_boot, len(members)))
        for k, m in enumerate(members):
            times = (drawn == k).sum(1)
            counts[:, m] += times[:, None]
    return counts


def flip_mean(engine: Engine, frames: Sequence[np.ndarray]) -> list[float]:
    """Each frame's score as the mean over the frame and its left-right mirror (a test-time flip)."""
    mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    return [(a.score + b.score) / 2 for a, b in zip(engine.score(list(frames)), engine.score(mirrored), strict=True)]


def frame_correct(clean: np.ndarray, copy: np.ndarray) -> np.ndarray:
    """Per frame: 1 if the clean frame scores above its copy, 0.5 for a tie, 0 otherwise (NaN: no copy, as for
    frames without an anechoic region) — `core.metrics.pairwise_accuracy` frame by frame."""
    return np.where(np.isnan(copy), np.nan, (clean > copy) + 0.5 * (clean == copy))


def correct(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`frame_correct` for every figure."""
    return {f: frame_correct(scores["clean"], scores[f]) for f in FIGURES}


def weighted(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample: the mean of the frames' values, each counted as often as drawn (NaN frames left out)."""
    ok = ~np.isnan(values)
    w = counts[:, ok]
    return np.asarray((w @ values[ok]) / w.sum(1))


def interval(point: float, boot: np.ndarray, target: float | None = TARGET) -> dict:
    boot = boot[~np.isnan(boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    out = {"point": point, "ci95": [float(lo), float(hi)]}
    if target is not None:
        out[f"share_at_least_{target}"] = float((boot >= target).mean())
    return out


def difference(point: float, boot: np.ndarray) -> dict:
    """`interval` of a paired difference, with the share of resamples in which it is above 0."""
    return interval(point, boot, None) | {"share_above_0": float((boot[~np.isnan(boot)] > 0).mean())}


def hip_auc(score: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Zero-shot AUC per resample (sample weights = multiplicities); NaN where a resample holds one class only."""
    out = np.full(len(counts), np.nan)
    for b, w in enumerate(counts):
        if (w[y == 1].sum() > 0) and (w[y == 0].sum() > 0):
            out[b] = roc_auc_score(y, score, sample_weight=w)
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None, help="checkpoint ('' = the bundled one); repeatable")
    ap.add_argument(
        "--flip-mean",
        action="store_true",
        help="also score each model as the mean over the image and its left-right mirror (a test-time flip; "
        "results/tta_flip_rule.txt); paired differences are always against the first entry, so with one --model "
        "the flip mean is paired against its own single view",
    )
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling (the copies use benchmarks.quality's)")
    ap.add_argument("--quality-json", default=str(RESULTS / "quality.json"), help="point figures to check against")
    ap.add_argument("--out", default=str(RESULTS / "uncertainty.json"))
    args = ap.parse_args(argv)
    models = args.model if args.model is not None else [""]
    rows = quality.held_out_rows()
    frames = [load_gray(r.path) for r in rows]
    all_variants = [quality.variants(f, 0, i) for i, f in enumerate(frames)]
    keys = ["clean", *FIGURES]
    counts = resample_counts([(r.source, r.group) for r in rows], args.n_boot, args.seed)
    _, y = quality.hip_frames(rows)
    hip_idx = np.array([i for i, r in enumerate(rows) if r.source == "hip"])
    published = json.loads(open(args.quality_json).read())
    out: dict = {
        "command": "python -m benchmarks.uncertainty " + shlex.join(argv),
        "n_frames": len(rows),
        "n_groups": {s: len({r.group for r in rows if r.source == s}) for s in sorted({r.source for r in rows})},
        "n_boot": args.n_boot,
        "resampling": "groups with replacement within each source; 95 % interval = 2.5th-97.5th percentile",
        "models": {},
    }
    # per model: each frame's outcome per figure, and the hip AUC with its resampled values
    per_model: dict[str, tuple[dict[str, np.ndarray], float, np.ndarray]] = {}
    scorers = []
    for path in models:
        engine = Engine(EngineConfig(model_path=path, backend="eager", num_threads=1, warmup_iterations=1))
        scorers.append((engine.model_id, lambda xs, e=engine: [s.score for s in e.score(xs)]))
        if args.flip_mean:
            scorers.append((f"{engine.model_id} flip mean", lambda xs, e=engine: flip_mean(e, xs)))
    for model_id, score_fn in scorers:
        t0 = time.monotonic()
        scores = quality.score_all(score_fn, all_variants, keys)
        print(f"{model_id}: {len(rows)} frames scored in {time.monotonic() - t0:.0f} s", flush=True)
        c = correct(scores)
        boot = {f: weighted(c[f], counts) for f in FIGURES}
        point = {f: float(np.nanmean(c[f])) for f in FIGURES}
        fam_boot = np.stack([boot[f] for f in FAMILIES])
        res: dict = {f: interval(point[f], boot[f]) for f in FIGURES}
        res["families_mean"] = interval(float(np.mean([point[f] for f in FAMILIES])), fam_boot.mean(0))
        res["families_min"] = interval(float(min(point[f] for f in FAMILIES)), fam_boot.min(0))
        hip_score = scores["clean"][hip_idx]
        hip_boot = hip_auc(hip_score, y, counts[:, hip_idx])
        hip_point = float(roc_auc_score(y, hip_score))
        res["hip_zero_shot_auc"] = interval(hip_point, hip_boot, 0.85)
        res["hip_zero_shot_auc"]["resamples_with_one_class"] = int(np.isnan(hip_boot).sum())
        if published.get("model_id") == model_id:
            pub = published["bundled"]
            ref = {**pub["families"], **{d: pub["dark_region"][d] for d in quality.DARK}}
            ref["hip"] = published["hip"]["zero_shot_score_auc"]
            mine = {**point, "hip": res["hip_zero_shot_auc"]["point"]}
            res["equals_quality_json"] = all(abs(mine[k] - v) < 1e-9 for k, v in ref.items())
            if not res["equals_quality_json"]:
                raise SystemExit(f"{model_id}: point figures differ from {args.quality_json}: {mine} vs {ref}")
        out["models"][model_id] = res
        per_model[model_id] = (c, hip_point, hip_boot)
        print(
            model_id,
            {
                k: [round(v["point"], 3), *(round(x, 3) for x in v["ci95"])]
                for k, v in res.items()
                if isinstance(v, dict)
            },
            flush=True,
        )
    ids = list(per_model)
    if len(ids) > 1:
        (c0, auc0, boot0), first = per_model[ids[0]], ids[0]
        out["paired_differences"] = {}
        for other in ids[1:]:
            c1, auc1, boot1 = per_model[other]
            d = {f: c1[f] - c0[f] for f in FIGURES} | {"families_mean": np.mean([c1[f] - c0[f] for f in FAMILIES], 0)}
            diff = {k: difference(float(np.nanmean(v)), weighted(v, counts)) for k, v in d.items()}
            diff["hip_zero_shot_auc"] = difference(auc1 - auc0, boot1 - boot0)
            out["paired_differences"][f"{other} minus {first}"] = diff
    write_json(args.out, out)


if __name__ == "__main__":
    main(sys.argv[1:])
