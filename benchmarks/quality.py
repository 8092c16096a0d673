"""Does the score mean image quality on real ultrasound, and does it generalise to artefacts it never saw?

    .venv/bin/python -m benchmarks.quality   -> benchmarks/results/quality.json + quality.md

Evaluation frames: every `real_us` row whose group was never trained on (core/data/corpus.py quality_split:
NC/ND lung POCUS and COVID-BLUES, BUSI breast, 40 HC18 fetal heads held out of the corpus, the infant hips).
Every frame gets, with a fixed seed: one degraded copy per artefact family (severity uniform in 0.3-1.0);
four quality-preserving changes (flip, brightness x0.9 and x1.1, a 4-pixel shift); and, when it has a clean
anechoic region, two copies with haze or noise added ONLY inside that region (the dark-region test).

1. The bundled model, end to end through `core.engine.Engine` (the node's path).
2. Every classical baseline of core/baselines.py on the same pairs.
3. Leave-one-family-out: for each family F, the lite recipe from the same ImageNet start with a fixed small
   budget (`--lofo-steps` top-training steps on the cached units of scripts/train_default_model.py) without
   any unit image of F, tested on F; an in-distribution run with the same budget beside it. Each run is made
   once per training seed (`--lofo-seeds`, default 1 and 2: one seed's left-out figure moves by up to 0.1).
4. USCL pretraining: the same in-distribution budget from the `usiqa-train pretrain` checkpoint.
5. Hip standard vs substandard (the only real quality labels): zero-shot AUC of the score, and grouped
   5-fold CV of a logistic-regression probe and of a nearest-standard-reference distance on the descriptor.
Stages are cached in --work (resumable); the bundled model's numbers are always recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from benchmarks.common import RESULTS, write_json
from usiqa_ros.core.baselines import available_baselines
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, Row, load_rows, quality_split
from usiqa_ros.core.data.degrade import FAMILIES, dark_region_mask, degrade, scan_mask
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.core.metrics import pairwise_accuracy
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame
from usiqa_ros.core.safe_io import atomic_write_text

if TYPE_CHECKING:  # training code is imported only by the stages that train
    from usiqa_ros.core.train.families import Cache, TopTrainConfig

CONSISTENCY = ("flip", "brightness_0.9", "brightness_1.1", "shift_4px")
DARK = ("dark_haze", "dark_noise")
OUT_JSON = RESULTS / "quality.json"
OUT_MD = RESULTS / "quality.md"
# The short runs train and score at the lite preset's 160 px (half the cost of 224 px; the bundled model's own
# column is at its checkpoint's size).
SHORT_RUN_SIZE = 160


def held_out_rows() -> list[Row]:
    """The evaluation's rows: real frames of groups never trained on (`quality_split`), checked to share no group
    with the training rows; every benchmark scores these."""
    train_rows, eval_rows = quality_split(load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us"))
    assert not ({r.group for r in train_rows} & {r.group for r in eval_rows}), "a group on both sides"
    return eval_rows


def dark_region_variants(img: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Haze or noise added only inside the frame's anechoic region(s); {} when it has none large enough."""
    sector = scan_mask(img)
    dark = dark_region_mask(img, sector, min_fraction=0.02)
    if dark.sum() < 0.02 * max(sector.sum(), 1):
        return {}
    h, w = img.shape
    soft = cv2.GaussianBlur(dark, (0, 0), 0.005 * w + 0.5)
    grain = rng.uniform(0.003, 0.01) * w
    tex = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), grain)
    tex = tex / max(float(tex.std()), 1e-6)
    hazy = img + soft * rng.uniform(0.25, 0.45) * np.clip(0.8 + 0.3 * tex, 0, 1.5)
    noisy = img + soft * rng.uniform(0.12, 0.25) * np.abs(rng.standard_normal((h, w)).astype(np.float32))
    return {"dark_haze": np.clip(hazy, 0, 1).astype(np.float32), "dark_noise": np.clip(noisy, 0, 1).astype(np.float32)}


def variants(img: np.ndarray, seed: int, idx: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((seed, idx))
    out = {"clean": img}
    for f in FAMILIES:
        out[f] = degrade(img, f, float(rng.uniform(0.3, 1.0)), rng)
    m = np.float32([[1, 0, 4], [0, 1, 0]])
    out.update(
        {
            "flip": np.ascontiguousarray(img[:, ::-1]),
            "brightness_0.9": np.clip(img * 0.9, 0, 1),
            "brightness_1.1": np.clip(img * 1.1, 0, 1),
            "shift_4px": cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_NEAREST),
        }
    )
    out.update(dark_region_variants(img, rng))
    return out


def summarise(scores: dict[str, np.ndarray], names: list[str]) -> dict:
    """Pairwise accuracies (clean > variant) per family and dark test; median |change| per consistency view."""
    clean = scores["clean"]
    res: dict = {"families": {}, "dark_region": {}, "consistency_median_abs": {}}
    for f in names:
        res["families"][f] = pairwise_accuracy(clean, scores[f])
    for d in DARK:
        ok = ~np.isnan(scores[d])
        res["dark_region"][d] = pairwise_accuracy(clean[ok], scores[d][ok]) if ok.any() else float("nan")
        res["dark_region"]["n"] = int(ok.sum())
    for c in CONSISTENCY:
        res["consistency_median_abs"][c] = float(np.median(np.abs(scores[c] - clean)))
    fam = list(res["families"].values())
    res["families_min"] = float(np.min(fam))
    res["families_mean"] = float(np.mean(fam))
    return res


CLEAN_BANDS = (0.0, 0.25, 0.5, 0.75, 1.0)


def by_clean_score(scores: dict[str, np.ndarray], names: list[str], sources: list[str] | None = None) -> list[dict]:
    """`summarise`'s pooled pairwise accuracy over `names` and its dark-region haze test, by the clean frame's own
    score in quarters of [0, 1]: an artefact moves the score of a frame already scored low less than that of a good
    one, so a planner should know where in the range the ranking holds. `sources`: each frame's source, counted per
    band."""
    band = np.searchsorted(CLEAN_BANDS[1:-1], scores["clean"], side="right")  # 0..3; a score of 1.0 in the top band
    src = None if sources is None else np.asarray(sources)
    out = []
    for b, (lo, hi) in enumerate(zip(CLEAN_BANDS[:-1], CLEAN_BANDS[1:], strict=True)):
        m = band == b
        row: dict = {"clean_score": [lo, hi], "n_frames": int(m.sum())}
        if src is not None:
            row["n_by_source"] = {k: int((m & (src == k)).sum()) for k in sorted(set(src.tolist()))}
        if m.any():
            part = summarise({k: v[m] for k, v in scores.items()}, names)
            row["pairwise"] = part["families_mean"]
            row["dark_haze"] = part["dark_region"]["dark_haze"]
        out.append(row)
    return out


def score_spread(scores: dict[str, np.ndarray]) -> dict:
    """How much of [0, 1] the score uses: pairwise accuracy only ranks, and a model whose scores all sit near one
    value (an average of unrelated weights, README) can rank well yet give a planner or a grade nothing to use."""
    clean = scores["clean"]
    drops = [float(np.median(clean - scores[f])) for f in FAMILIES]
    return {
        "clean_std": float(clean.std()),
        "clean_q10_q50_q90": [float(q) for q in np.quantile(clean, [0.1, 0.5, 0.9])],
        "median_drop_per_family_mean": float(np.mean(drops)),
    }


def score_all(fn, frames_variants: list[dict[str, np.ndarray]], keys: list[str]) -> dict[str, np.ndarray]:
    out = {k: np.full(len(frames_variants), np.nan) for k in keys}
    for i, v in enumerate(frames_variants):
        present = [k for k in keys if k in v]
        vals = fn([v[k] for k in present])
        for k, s in zip(present, vals, strict=True):
            out[k][i] = s
    return out


def hip_frames(rows: list[Row]) -> tuple[list[Row], np.ndarray]:
    """The infant-hip rows and their labels (1 = standard plane, 0 = substandard): the only real quality labels."""
    hip = [r for r in rows if r.source == "hip"]
    return hip, np.array([1 if "quality=standard" in r.label else 0 for r in hip])


def hip_checks(engine: Engine, rows: list[Row], seed: int) -> dict:
    """Zero-shot AUC of the score, grouped 5-fold CV of a logistic probe and a reference-distance score."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hip, y = hip_frames(rows)
    groups = [r.group for r in hip]
    imgs = [load_gray(r.path) for r in hip]
    score = np.array([s.score for s in engine.score(imgs)])
    x = torch.from_numpy(np.stack([engine.preprocess(i) for i in imgs])).expand(-1, 3, -1, -1)
    with torch.inference_mode():
        feats = engine.checkpoint.model.eval().forward_features(x).numpy()
    probe, dist = np.zeros(len(y)), np.zeros(len(y))
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for tr, te in cv.split(feats, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(feats[tr], y[tr])
        probe[te] = clf.predict_proba(feats[te])[:, 1]
        refs = feats[tr][y[tr] == 1]
        d = np.linalg.norm(feats[te][:, None] - refs[None], axis=-1)
        dist[te] = -np.sort(d, 1)[:, : min(5, len(refs))].mean(1)
    return {
        "n_standard": int(y.sum()),
        "n_substandard": int((1 - y).sum()),
        "zero_shot_score_auc": float(roc_auc_score(y, score)),
        "grouped_cv_probe_auc": float(roc_auc_score(y, probe)),
        "grouped_cv_reference_distance_auc": float(roc_auc_score(y, dist)),
        "cv": "StratifiedGroupKFold(5) over manifest groups; probe = logistic regression (C=0.1) on the "
        "forward_features descriptor; reference distance = -mean distance to the 5 nearest standard frames of the "
        "training folds",
    }


def run_lofo(
    args, all_variants: list[dict[str, np.ndarray]], keys: list[str], work: Path, log, eval_rows: list[Row]
) -> dict:
    """Leave-one-family-out and in-distribution runs (fixed budget) on the cached units, scored at their own
    SHORT_RUN_SIZE, each with its zero-shot hip AUC (the real labels); resumable per run."""
    from sklearn.metrics import roc_auc_score

    from scripts.train_default_model import FROZEN, get_cache, start_model
    from usiqa_ros.core.train.families import TopTrainConfig, trunk_feats

    frozen = FROZEN[args.preset] if args.frozen < 0 else args.frozen
    hip_idx = np.array([i for i, r in enumerate(eval_rows) if r.source == "hip"], dtype=int)
    hip_y = hip_frames(eval_rows)[1]  # same rows, same order
    pre = PreprocessConfig(input_size=SHORT_RUN_SIZE)
    eval_inputs = [{k: preprocess_frame(v, pre) for k, v in vs.items()} for vs in all_variants]
    cache = get_cache(
        Path(args.train_work),
        args.preset,
        "",
        args.units,
        args.shards,
        0,
        frozen,
        size=SHORT_RUN_SIZE,
        local_prob=args.local_prob,
        extra_families=tuple(args.extra_families),
        combined_prob=args.combined_prob,
    )
    base, start = start_model(args.preset, "", size=SHORT_RUN_SIZE)
    flat = [(i, k) for i, v in enumerate(eval_inputs) for k in keys if k in v]
    feats_path = work / f"eval_trunk_{args.preset}_f{frozen}_{SHORT_RUN_SIZE}px.safetensors"
    if feats_path.exists():
        from safetensors.torch import load_file

        feats = load_file(str(feats_path))["feats"]
    else:
        from safetensors.torch import save_file

        feats = trunk_feats(base, [eval_inputs[i][k] for i, k in flat], frozen)
        if not args.lofo_part or args.lofo_part.startswith("0/"):
            save_file({"feats": feats}, str(feats_path))
    runs = {"in_distribution": ()} | {f"without_{f}": (f,) for f in FAMILIES}
    if args.pretrained and Path(args.pretrained).exists():
        runs["in_distribution_uscl_init"] = ()
    if args.lofo_runs:
        runs = {name: ex for name, ex in runs.items() if name in args.lofo_runs.split(",")}
    if args.lofo_part:  # "k/n": this process trains every n-th run from the k-th (parallel workers)
        k, n = (int(v) for v in args.lofo_part.split("/"))
        runs = {name: ex for i, (name, ex) in enumerate(runs.items()) if i % n == k}
    results: dict = {}
    for seed in args.lofo_seeds:
        results[str(seed)] = by_name = {}
        for name, exclude in runs.items():
            path = run_path(work, name, seed)
            if path.exists():
                by_name[name] = json.loads(path.read_text())
                continue
            init = args.pretrained if name.endswith("uscl_init") else ""
            cfg = TopTrainConfig(
                steps=args.lofo_steps, units_per_step=args.lofo_units, lr=1e-3, seed=seed, exclude=exclude
            )
            per, summary = short_run(args.preset, init, cache, frozen, cfg, feats, flat, len(eval_inputs), keys)
            res = summarise(per, list(FAMILIES))
            res["by_clean_score"] = by_clean_score(per, list(exclude) or list(FAMILIES), [r.source for r in eval_rows])
            if len(set(hip_y)) == 2:
                res["hip_zero_shot_auc"] = float(roc_auc_score(hip_y, per["clean"][hip_idx]))
            res["seconds"] = summary["seconds"]
            res["excluded"] = list(exclude)
            atomic_write_text(path, json.dumps(res, indent=1))
            log(
                f"{name} (seed {seed}): min {res['families_min']:.3f} mean {res['families_mean']:.3f} "
                f"({summary['seconds']} s)"
            )
            by_name[name] = res
    return {
        "start": start,
        "steps": args.lofo_steps,
        "units_per_step": args.lofo_units,
        "frozen_blocks": frozen,
        "seeds": list(args.lofo_seeds),
        "runs_by_seed": results,
    }


def short_run(
    preset: str,
    init: str,
    cache: Cache,
    frozen: int,
    cfg: TopTrainConfig,
    feats: torch.Tensor,
    flat: list[tuple[int, str]],
    n_frames: int,
    keys: list[str],
) -> tuple[dict[str, np.ndarray], dict]:
    """One short run: the preset from `init` (ImageNet when empty) at SHORT_RUN_SIZE, its top trained on `cache` by
    `cfg` (a TopTrainConfig), then scored on the cached trunk features `feats` of the images `flat` = (frame, key);
    returns the scores per key and frame (NaN where a frame has no such image) and train_top's summary."""
    from scripts.train_default_model import start_model
    from usiqa_ros.core.train.families import scores_from_feats, train_top

    model, _ = start_model(preset, init, size=SHORT_RUN_SIZE)
    summary = train_top(model, cache, frozen, cfg, log=lambda m: None)
    s = scores_from_feats(model, feats, frozen)
    per = {k: np.full(n_frames, np.nan) for k in keys}
    for (i, k), v in zip(flat, s, strict=True):
        per[k][i] = v
    return per, summary


def run_path(work: Path, name: str, seed: int) -> Path:
    """Where short run `name` with training seed `seed` is cached; seed 1 keeps the single-seed name run_<name>.json."""
    return work / (f"run_{name}.json" if seed == 1 else f"run_{name}_seed{seed}.json")


def lofo_cells(lofo: dict, run: str, family: str) -> list[float]:
    """The accuracy on `family` of short run `run`, one value per training seed."""
    return [by_name[run]["families"][family] for by_name in lofo["runs_by_seed"].values() if run in by_name]


def markdown(res: dict) -> str:
    fams = list(FAMILIES)
    model = res["bundled"]
    base = res["baselines"]
    lofo = res.get("lofo", {})
    seeds = "/".join(str(k) for k in lofo.get("seeds", []))
    short = [f"in-distr. (short, seeds {seeds})", f"left out (short, seeds {seeds})"] if lofo else []
    head = ["family", "bundled model", *short, *base]
    lines = [
        f"Pairwise accuracy, clean real frame > its degraded copy, {res['n_eval_frames']} held-out real frames "
        f"(groups never trained on). Model {res['model_id']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for f in fams:
        row = [f, f"{model['families'][f]:.3f}"]
        if lofo:
            row += [" / ".join(f"{v:.3f}" for v in lofo_cells(lofo, r, f)) for r in ("in_distribution", f"without_{f}")]
        row += [f"{b['families'][f]:.3f}" for b in base.values()]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Dark-region test (n = {model['dark_region']['n']} frames with an anechoic region):", ""]
    lines += ["| " + " | ".join(["test", "bundled model", *base]) + " |", "|" + "---|" * (2 + len(base))]
    for d in DARK:
        cells = [d, f"{model['dark_region'][d]:.3f}", *(f"{b['dark_region'][d]:.3f}" for b in base.values())]
        lines.append("| " + " | ".join(cells) + " |")
    bands = model.get("by_clean_score", [])
    if bands:
        cells = [
            f"{b['clean_score'][0]:.2f}-{b['clean_score'][1]:.2f}: {b['n_frames']} frames"
            + (f", pairwise {b['pairwise']:.3f}, dark haze {b['dark_haze']:.3f}" if b["n_frames"] else "")
            for b in bands
        ]
        lines += ["", "By the clean frame's own score (bundled model, all families pooled): " + "; ".join(cells) + "."]
    lines += ["", "Consistency, median |score change| (bundled model): "]
    lines.append(", ".join(f"{k} {v:.4f}" for k, v in model["consistency_median_abs"].items()))
    hip = res.get("hip", {})
    if hip:
        lines += [
            "",
            f"Hip standard vs substandard ({hip['n_standard']} vs {hip['n_substandard']}): zero-shot score AUC "
            f"{hip['zero_shot_score_auc']:.3f}; grouped 5-fold CV on the descriptor: logistic probe AUC "
            f"{hip['grouped_cv_probe_auc']:.3f}, nearest-standard-reference distance AUC "
            f"{hip['grouped_cv_reference_distance_auc']:.3f}.",
        ]
    uscl = []
    for seed, by_name in lofo.get("runs_by_seed", {}).items():
        if "in_distribution_uscl_init" in by_name:
            a, b = by_name["in_distribution"], by_name["in_distribution_uscl_init"]
            uscl.append(
                f"seed {seed}: ImageNet start mean {a['families_mean']:.3f} / min {a['families_min']:.3f}, dark haze "
                f"{a['dark_region']['dark_haze']:.3f}; ImageNet + USCL start {b['families_mean']:.3f} / "
                f"{b['families_min']:.3f}, dark haze {b['dark_region']['dark_haze']:.3f}"
            )
    if uscl:
        lines += ["", "USCL pretraining, same short budget: " + "; ".join(uscl) + "."]
    if lofo:
        lines += [
            "",
            f"Short runs: {res['lofo']['steps']} steps of {res['lofo']['units_per_step']} units from "
            f"{res['lofo']['start']}, {res['lofo']['frozen_blocks']} leading blocks frozen.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="checkpoint (default: the bundled one)")
    ap.add_argument("--work", default="runs/quality")
    ap.add_argument("--train-work", default="runs/default_model", help="cache of scripts/train_default_model.py")
    ap.add_argument("--units", type=int, default=6000, help="cached units of the train work dir (as the bundled model)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--lofo-steps", type=int, default=300)
    ap.add_argument("--lofo-units", type=int, default=8, help="units (4 images each) per step of the short runs")
    ap.add_argument("--preset", default="usqnet_lite", help="model preset of the short runs (a lite one)")
    ap.add_argument("--frozen", type=int, default=-1, help="frozen leading blocks of the short runs (-1: preset's)")
    ap.add_argument("--lofo-part", default="", help="k/n: only train every n-th short run from the k-th, then exit")
    ap.add_argument("--local-prob", type=float, default=0.0, help="the cache's UnitConfig.local_prob (train script)")
    ap.add_argument(
        "--extra-families", nargs="*", default=[], help="the cache's UnitConfig.extra_families (train script)"
    )
    ap.add_argument(
        "--lofo-seeds",
        type=int,
        nargs="+",
        default=[1, 2],
        help="training seeds of the short runs (unit order): each run is made once per seed (one seed is noisy)",
    )
    ap.add_argument("--combined-prob", type=float, default=0.0, help="the cache's UnitConfig.combined_prob")
    ap.add_argument("--lofo-runs", default="", help="comma-separated short runs to make (default: all)")
    ap.add_argument("--skip-lofo", action="store_true")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--pretrained", default="runs/pretrain/pretrain.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", default="", help="an earlier quality JSON of the same model: reuse its bundled/hip part")
    ap.add_argument(
        "--max-frames", type=int, default=0, help="evaluate every k-th frame to keep this many (slow models)"
    )
    ap.add_argument("--out-json", default=str(OUT_JSON))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "quality.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=logf, flush=True)

    eval_rows = held_out_rows()
    if args.max_frames and len(eval_rows) > args.max_frames:
        eval_rows = eval_rows[:: -(-len(eval_rows) // args.max_frames)]
    frames = [load_gray(r.path) for r in eval_rows]
    all_variants = [variants(f, args.seed, i) for i, f in enumerate(frames)]
    keys = ["clean", *FAMILIES, *CONSISTENCY, *DARK]
    if args.lofo_part:
        run_lofo(args, all_variants, keys, work, log, eval_rows)
        return
    engine = Engine(EngineConfig(model_path=args.model, backend="eager", num_threads=1, warmup_iterations=1))
    t0 = time.monotonic()
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    if earlier.get("model_id") == engine.model_id and earlier.get("n_eval_frames") == len(eval_rows):
        res = {k: earlier[k] for k in ("model_id", "n_eval_frames", "eval_sources", "severity", "bundled", "hip")}
        res["command"] = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
        res["bundled_from"] = args.reuse
        return finish(args, res, work, all_variants, keys, engine, log, eval_rows)
    bundled_scores = score_all(lambda xs: [s.score for s in engine.score(xs)], all_variants, keys)
    res: dict = {
        "command": "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_id": engine.model_id,
        "n_eval_frames": len(eval_rows),
        "eval_sources": {s: sum(r.source == s for r in eval_rows) for s in sorted({r.source for r in eval_rows})},
        "severity": "uniform 0.3-1.0 per frame and family (seeded)",
        "bundled": summarise(bundled_scores, list(FAMILIES)),
    }
    res["bundled"]["score_spread"] = score_spread(bundled_scores)
    res["bundled"]["by_clean_score"] = by_clean_score(bundled_scores, list(FAMILIES), [r.source for r in eval_rows])
    res["bundled"]["per_source_families_mean"] = {
        s: float(
            np.mean(
                [
                    pairwise_accuracy(
                        bundled_scores["clean"][[r.source == s for r in eval_rows]],
                        bundled_scores[f][[r.source == s for r in eval_rows]],
                    )
                    for f in FAMILIES
                ]
            )
        )
        for s in res["eval_sources"]
    }
    log(f"bundled model scored in {time.monotonic() - t0:.0f} s: min {res['bundled']['families_min']:.3f}")
    res["hip"] = hip_checks(engine, eval_rows, args.seed) if sum(r.source == "hip" for r in eval_rows) >= 10 else {}
    log(f"hip: {res['hip']}")
    return finish(args, res, work, all_variants, keys, engine, log, eval_rows)


def finish(
    args, res: dict, work: Path, all_variants, keys: list[str], engine: Engine, log, eval_rows: list[Row]
) -> None:
    """Baselines, short runs, acceptance, files."""
    res["baselines"] = {}
    if not args.skip_baselines:
        for name, fn in available_baselines().items():
            path = work / f"baseline_{name}.json"
            if path.exists():
                res["baselines"][name] = json.loads(path.read_text())
                continue
            t0 = time.monotonic()
            sc = score_all(
                lambda xs, fn=fn: [fn(x) for x in xs], all_variants, ["clean", *FAMILIES, *DARK, *CONSISTENCY]
            )
            b = summarise(sc, list(FAMILIES))
            del b["consistency_median_abs"]  # baselines are not on the [0, 1] score scale
            path.write_text(json.dumps(b, indent=1))
            res["baselines"][name] = b
            log(f"baseline {name}: {time.monotonic() - t0:.0f} s, min {b['families_min']:.3f}")
    if not args.skip_lofo:
        res["lofo"] = run_lofo(args, all_variants, keys, work, log, eval_rows)
    beats = {
        f: all(res["bundled"]["families"][f] > b["families"][f] for b in res["baselines"].values()) for f in FAMILIES
    }
    res["acceptance"] = {
        "bundled_families_min_ge_0.95": res["bundled"]["families_min"] >= 0.95,
        # the left-out family's accuracy averaged over the short runs' seeds, worst family
        "lofo_left_out_min": min(
            (float(np.mean(lofo_cells(res["lofo"], f"without_{f}", f))) for f in FAMILIES if "lofo" in res),
            default=float("nan"),
        ),
        "dark_region_ge_0.95": min(res["bundled"]["dark_region"][d] for d in DARK) >= 0.95,
        "consistency_median_le_0.03": max(res["bundled"]["consistency_median_abs"].values()) <= 0.03,
        "above_every_baseline_per_family": beats,
        "hip_zero_shot_auc": res["hip"].get("zero_shot_score_auc"),
    }
    write_json(args.out_json, res)  # atomic, like every result file
    atomic_write_text(Path(args.out_json).with_suffix(".md"), markdown(res))
    log(markdown(res))


if __name__ == "__main__":
    main()
