"""Short in-distribution runs of the bundled recipe, scored on everything at once: the 13 library families, the
dark-region tests and consistency (benchmarks.quality's pairs), the out-of-library kinds (benchmarks.unseen_kinds),
the veil diagnostic and the hip zero-shot AUC; with --leave-out, also runs trained without a family and scored on
it. Compares versions of the artefact library or of the recipe: run it once per version,
each from its own checkout with its own --train-work (the unit cache is drawn from that checkout's library).

    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_old --label old --out runs/lib_old/short.json
    # in a second checkout with the library version to compare, e.g. `git apply benchmarks/results/haze_veil.patch`:
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_new --label new --out runs/lib_new/short.json
    # or a training-only artefact beside the library (results/contrast_loss_rule.txt):
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_cl --label contrast_loss \
        --extra-families contrast_loss --out runs/lib_cl/short.json
    # the same cache, its training-only kind taught by ranking only (results/rank_only_fill_rule.txt):
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_cl --label contrast_loss_rank_only \
        --extra-families contrast_loss --rank-only contrast_loss --out runs/lib_cl/rank_only.json
    # a loss weight, with families left out of training and scored (results/grade_weight_rule.txt); the base's
    # in-distribution runs kept and its left-out runs added:
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_old --label grade_w025 --grade-weight 0.25 \
        --leave-out shadow compression clutter --out runs/lib_old/grade_w025.json
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_old --label old --extend \
        runs/lib_old/short3.json --leave-out shadow compression clutter --out runs/lib_old/base_lofo.json
    # runs split over two processes, then joined (results/frozen3_rule.txt; the unit cache built first):
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_f3 --frozen 3 --label frozen3 \
        --leave-out shadow --out runs/lib_f3/part1.json &
    .venv/bin/python -m benchmarks.short_run_kinds --train-work runs/lib_f3 --frozen 3 --label frozen3_part2 \
        --left-out-only --leave-out compression clutter --out runs/lib_f3/part2.json
    .venv/bin/python -m benchmarks.short_run_kinds --merge runs/lib_f3/part1.json runs/lib_f3/part2.json \
        --out runs/lib_f3/frozen3.json
    # seed-mean figures of each version and their change from the first (results/contrast_loss.json):
    .venv/bin/python -m benchmarks.short_run_kinds --judge runs/lib_old/short.json runs/lib_cl/short.json \
        runs/lib_cl2/short.json --out benchmarks/results/contrast_loss.json

Same recipe as benchmarks.quality's "in_distribution" short run (300 steps x 8 units from ImageNet
EfficientNet-Lite0, blocks 0-3 frozen, 160 px, the 6,000 cached units of scripts/train_default_model.py) and the same
scoring path (cached trunk features, the trained top). Its 13-family figures match that run's quality.json cells
only to seed noise: the unit cache is rebuilt in --train-work, and a cache built on 2026-12-01 gave cells up to
0.046 apart from the earlier one (results/haze_veil.json); compare library versions with caches built alike. From the
same cache and seed a run repeats exactly. Each seed also keeps the mean score per image key and the family
accuracies per source, to see where a change lands (clean frames falling or copies rising; which anatomy), and
(from 2026-12-02) each frame's pairwise outcome per key with the frames' groups: when the base and a version both
have them, --judge adds paired 95 % intervals of the judged changes, resampling the held-out groups as
benchmarks.uncertainty does (frame noise only; the two seeds show the training's).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import quality, uncertainty, unseen_kinds
from benchmarks.common import write_json
from scripts.train_default_model import add_family_weight_option, get_cache, start_model
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.metrics import pairwise_accuracy
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame
from usiqa_ros.core.train.families import TopTrainConfig, trunk_feats


def figures(run: dict) -> dict:
    """The figures the library rules judge (results/haze_veil_rule.txt, contrast_loss_rule.txt), averaged over the
    run's seeds: family mean, each family, dark-region haze and noise, the five out-of-library kinds other than
    low_dynamic_range, low_dynamic_range and the veil."""
    seeds = list(run["seeds"].values())
    five = [k for k in unseen_kinds.KINDS if k != "low_dynamic_range"]

    def avg(get: Callable[[dict], float]) -> float:
        return float(np.mean([get(r) for r in seeds]))

    return {
        "families_mean": avg(lambda r: r["families_mean"]),
        "dark_haze": avg(lambda r: r["dark_region"]["dark_haze"]),
        "dark_noise": avg(lambda r: r["dark_region"]["dark_noise"]),
        "unseen_five_mean": avg(lambda r: float(np.mean([r["unseen"]["pairwise"][k] for k in five]))),
        "low_dynamic_range": avg(lambda r: r["unseen"]["pairwise"]["low_dynamic_range"]),
        "veil": avg(lambda r: r["unseen"]["diagnostics"]["veil"]),
        "families": {f: avg(lambda r, f=f: r["families"][f]) for f in seeds[0]["families"]},
        "unseen": {k: avg(lambda r, k=k: r["unseen"]["pairwise"][k]) for k in unseen_kinds.KINDS},
    } | left_out_figures(run)


def left_out_figures(run: dict) -> dict:
    """Seed means of the left-out runs (`--leave-out`): each family's accuracy when trained without it, their mean."""
    if not run.get("left_out"):
        return {}
    cells = {f: float(np.mean([r["pairwise"] for r in by_seed.values()])) for f, by_seed in run["left_out"].items()}
    return {"left_out_mean": float(np.mean(list(cells.values()))), "left_out": cells}


def outcomes(clean: np.ndarray, copy: np.ndarray) -> list[float | None]:
    """Each frame's pairwise outcome (`uncertainty.frame_correct`) as JSON: None where the frame has no such copy."""
    return [None if np.isnan(x) else float(x) for x in uncertainty.frame_correct(clean, copy)]


def judged_per_frame(run: dict) -> dict[str, np.ndarray]:
    """Per frame, averaged over the run's seeds: the pairwise outcome of each judged figure (`figures`' means taken
    per frame: the 13 families, dark haze and noise, the five kinds, dynamic range, the veil, clutter)."""
    seeds = [r["per_frame"] for r in run["seeds"].values()]
    five = [k for k in unseen_kinds.KINDS if k != "low_dynamic_range"]

    def avg(keys: list[str]) -> np.ndarray:
        return np.asarray(np.mean([np.mean([np.asarray(s[k], float) for k in keys], 0) for s in seeds], 0))

    return {
        "families_mean": avg(list(FAMILIES)),
        "clutter": avg(["clutter"]),
        "dark_haze": avg(["dark_haze"]),
        "dark_noise": avg(["dark_noise"]),
        "unseen_five_mean": avg([f"unseen/{k}" for k in five]),
        "low_dynamic_range": avg(["unseen/low_dynamic_range"]),
        "veil": avg(["unseen/veil"]),
    }


def paired_intervals(base: dict, run: dict, n_boot: int = 2000) -> dict:
    """95 % intervals of the change (run minus base) of each judged figure, the held-out groups resampled."""
    if base["frames"] != run["frames"]:
        raise SystemExit(f"{run['label']}: its frames differ from the base's")
    counts = uncertainty.resample_counts([(s, g) for s, g in base["frames"]], n_boot, 0)
    b, v = judged_per_frame(base), judged_per_frame(run)
    out = {}
    for k in b:
        d = v[k] - b[k]
        boot = uncertainty.weighted(d, counts)
        out[k] = uncertainty.interval(float(np.nanmean(d)), boot, None) | {"share_below_0": float((boot < 0).mean())}
    return out


def judge(runs: list[dict], command: str) -> dict:
    """Seed-mean figures of each run and their change from the first (the base); every run is kept whole."""
    base = figures(runs[0])
    for run in runs[1:]:
        if run["seeds"].keys() != runs[0]["seeds"].keys():
            raise SystemExit(f"{run['label']}: seeds {sorted(run['seeds'])}, the base has {sorted(runs[0]['seeds'])}")
    out: dict = {"command": command, "base": runs[0]["label"]}
    out["versions"] = {}
    for run in runs:
        fig = figures(run)
        if fig.get("left_out", {}).keys() != base.get("left_out", {}).keys():
            raise SystemExit(f"{run['label']}: left-out families differ from the base's")
        delta = {k: fig[k] - base[k] for k in fig if isinstance(fig[k], float)}
        for k in ("families", "left_out"):
            if k in fig:
                delta[k] = {f: fig[k][f] - base[k][f] for f in fig[k]}
        out["versions"][run["label"]] = {"figures": fig, "change_from_base": delta, "runs": run}
        if run is not runs[0] and all("per_frame" in r for x in (runs[0], run) for r in x["seeds"].values()):
            out["versions"][run["label"]]["change_ci95"] = paired_intervals(runs[0], run)
    return out


def merge(parts: list[dict], command: str) -> dict:
    """One output from runs split over processes (same cache, settings and frames): every part's in-distribution
    seeds and left-out families, each of which may come from one part only; the first part's label is kept."""
    out = dict(parts[0])
    out["seeds"] = dict(parts[0]["seeds"])
    out["left_out"] = dict(parts[0].get("left_out", {}))
    for part in parts[1:]:
        if part["frames"] != out["frames"]:
            raise SystemExit(f"{part['label']}: its frames differ from {out['label']}'s")
        twice = (set(out["seeds"]) & set(part["seeds"])) | (set(out["left_out"]) & set(part.get("left_out", {})))
        if twice:
            raise SystemExit(f"seeds or left-out families {sorted(twice)} in two parts")
        out["seeds"] |= part["seeds"]
        out["left_out"] |= part.get("left_out", {})
    if not out["left_out"]:
        del out["left_out"]
    out["command"] = " ; ".join([p["command"] for p in parts] + [command])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-work", help="unit cache of this checkout's library")
    ap.add_argument("--label", help="name of this library version in the output")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--frozen", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--units-per-step", type=int, default=8)
    ap.add_argument("--extra-families", nargs="*", default=[], help="the cache's UnitConfig.extra_families")
    ap.add_argument(
        "--rank-only", nargs="*", default=[], help="families taught by ranking only (TopTrainConfig.rank_only)"
    )
    ap.add_argument(
        "--grade-weight", type=float, default=TopTrainConfig.grade_weight, help="TopTrainConfig.grade_weight"
    )
    add_family_weight_option(ap)
    ap.add_argument(
        "--leave-out",
        nargs="*",
        default=[],
        choices=list(FAMILIES),
        help="also train without each of these families and score it",
    )
    ap.add_argument(
        "--extend",
        metavar="JSON",
        help="an earlier output of the same cache and settings: keep its in-distribution runs, add --leave-out's",
    )
    ap.add_argument(
        "--left-out-only", action="store_true", help="no in-distribution runs (a second process's part, see --merge)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--judge", nargs="+", metavar="JSON", help="no runs: compare outputs of this module, the first is the base"
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no runs: join outputs of runs split over processes (their seeds and left-out families)",
    )
    args = ap.parse_args(argv)
    command = "python -m benchmarks.short_run_kinds " + " ".join(argv or [])
    if args.judge:
        write_json(args.out, judge([json.loads(Path(p).read_text()) for p in args.judge], command))
        return
    if args.merge:
        write_json(args.out, merge([json.loads(Path(p).read_text()) for p in args.merge], command))
        return
    if not (args.train_work and args.label):
        ap.error("--train-work and --label are required for runs")
    torch.set_num_threads(1)
    size = quality.SHORT_RUN_SIZE
    eval_rows = quality.held_out_rows()
    frames = [load_gray(r.path) for r in eval_rows]
    sources = np.array([r.source for r in eval_rows])
    images = [
        quality.variants(f, 0, i)
        | {f"unseen/{k}": v for k, v in unseen_kinds.variants(f, 0, i).items() if k != "clean"}
        for i, f in enumerate(frames)
    ]
    keys = sorted({k for v in images for k in v})
    flat = [(i, k) for i, v in enumerate(images) for k in keys if k in v]
    pre = PreprocessConfig(input_size=size)
    base, start = start_model("usqnet_lite", "", size=size)
    t0 = time.monotonic()
    feats = trunk_feats(base, [preprocess_frame(images[i][k], pre) for i, k in flat], args.frozen)
    print(f"{len(flat)} images through the frozen trunk in {time.monotonic() - t0:.0f} s", flush=True)
    cache = get_cache(
        Path(args.train_work),
        "usqnet_lite",
        "",
        6000,
        2,
        0,
        args.frozen,
        size=size,
        extra_families=tuple(args.extra_families),
    )
    hip_idx = np.nonzero(sources == "hip")[0]
    _, hip_y = quality.hip_frames([eval_rows[i] for i in hip_idx])
    out: dict = {
        "label": args.label,
        "start": start,
        "command": command,
        "seeds": {},
        "frames": [[r.source, r.group] for r in eval_rows],
    }
    if args.extend:
        earlier = json.loads(Path(args.extend).read_text())
        if earlier["frames"] != out["frames"]:
            raise SystemExit(f"{args.extend}: its frames differ from this run's")
        out = earlier | {"label": args.label, "command": f"{earlier['command']} ; {command}"}

    def config(seed: int, exclude: tuple[str, ...] = ()) -> TopTrainConfig:
        return TopTrainConfig(
            steps=args.steps,
            units_per_step=args.units_per_step,
            lr=1e-3,
            seed=seed,
            rank_only=tuple(args.rank_only),
            grade_weight=args.grade_weight,
            family_weights=tuple(args.family_weight),
            exclude=exclude,
        )

    def hip_auc(per: dict[str, np.ndarray]) -> float:
        return float(roc_auc_score(hip_y, per["clean"][hip_idx]))

    for seed in [] if args.extend or args.left_out_only else args.seeds:
        per, summary = quality.short_run(
            "usqnet_lite", "", cache, args.frozen, config(seed), feats, flat, len(images), keys
        )
        res = quality.summarise(per, list(FAMILIES))
        res["unseen"] = unseen_kinds.summarise(
            {"clean": per["clean"]} | {k: per[f"unseen/{k}"] for k in [*unseen_kinds.KINDS, *unseen_kinds.DIAGNOSTICS]}
        )
        res["mean_score"] = {k: float(np.nanmean(v)) for k, v in per.items()}
        res["families_by_source"] = {
            src: quality.summarise({k: v[sources == src] for k, v in per.items()}, list(FAMILIES))["families"]
            for src in sorted(set(sources.tolist()))
        }
        res["per_frame"] = {
            k: outcomes(per["clean"], per[k]) for k in per if k != "clean" and k not in quality.CONSISTENCY
        }
        res["hip_zero_shot_auc"] = hip_auc(per)
        res["seconds"] = summary["seconds"]
        out["seeds"][str(seed)] = res
        print(
            f"seed {seed}: families mean {res['families_mean']:.3f}, veil {res['unseen']['diagnostics']['veil']:.3f}, "
            f"unseen {res['unseen']['pairwise']}",
            flush=True,
        )
        write_json(args.out, out)
    for family in args.leave_out:
        for seed in args.seeds:
            per, summary = quality.short_run(
                "usqnet_lite", "", cache, args.frozen, config(seed, (family,)), feats, flat, len(images), keys
            )
            out.setdefault("left_out", {}).setdefault(family, {})[str(seed)] = {
                "pairwise": pairwise_accuracy(per["clean"], per[family]),
                "hip_zero_shot_auc": hip_auc(per),
                "per_frame": outcomes(per["clean"], per[family]),
                "seconds": summary["seconds"],
            }
            print(f"without {family} (seed {seed}): {out['left_out'][family][str(seed)]['pairwise']:.3f}", flush=True)
            write_json(args.out, out)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
