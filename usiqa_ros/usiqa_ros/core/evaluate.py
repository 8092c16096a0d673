"""`usiqa-eval`: score a checkpoint on graded data or on synthetic (clean, degraded) pairs, with baselines.

Graded data (`--data`: CSV `file,grade`, folder-per-grade, labels.csv folder): accuracy, macro-F1,
per-class sensitivity/specificity, confusion matrix, SROCC/PLCC, MAE, all-pairs ranking accuracy.
Pairs (`--pairs`): the held-out test groups of the dev set (split JSON beside the default model, else a
fresh grouped split of the manifest), each frame against a heavily degraded copy per degradation type;
pairwise accuracy per type. Both modes: weak-view consistency and the baselines of `baselines.py` side by side.
Writes metrics.json, scores.png, confusion.png (graded data) and summary.md into `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usiqa_ros.core import metrics
from usiqa_ros.core.baselines import available_baselines
from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from usiqa_ros.core.data.datasets import DatasetError, load_any, load_manifest, read_image, require_grades
from usiqa_ros.core.data.degrade import DEGRADATIONS, degrade
from usiqa_ros.core.data.splits import grouped_split, load_split
from usiqa_ros.core.data.synthetic import heavy_severity, weak_view
from usiqa_ros.core.model import USQNet, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch

REAL_US = Path(__file__).resolve().parents[4] / "shared" / "data" / "real_us"


@torch.inference_mode()
def model_outputs(model: USQNet, frames: list[np.ndarray], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x G, score N in [0, 1]) with the node's preprocessing."""
    pre = PreprocessConfig(input_size=model.config.input_size)
    model.eval()
    logits = []
    for i in range(0, len(frames), batch):
        logits.append(model(to_batch([preprocess_frame(f, pre) for f in frames[i : i + batch]])).float())
    lt = torch.cat(logits)
    return lt.numpy(), expected_score(lt)[1].numpy()


def weak_consistency(model: USQNet, frames: list[np.ndarray], scores: np.ndarray, seed: int) -> float:
    rng = np.random.default_rng((seed, 7))
    _, weak = model_outputs(model, [weak_view(f, rng) for f in frames])
    return metrics.weak_view_consistency(scores, weak)


def baseline_scores(frames: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    fns = available_baselines()
    return {n: np.array([fns[n](f) for f in frames]) for n in names if n in fns}


def test_frames_of_dev_set(real_us: Path, split_path: Path | None, seed: int) -> tuple[list[str], str]:
    """Keys of the held-out groups: the default model's split when present, else a fresh grouped split."""
    if split_path and split_path.is_file():
        return load_split(split_path)["test"], str(split_path)
    items = load_manifest(real_us / "manifest.csv", verify=False)
    keys = [it.key for it in items]
    split = grouped_split(keys, [it.group for it in items], (0.7, 0.15, 0.15), seed, [k.split("_")[0] for k in keys])
    return split["test"], f"grouped_split(seed={seed}) of {real_us / 'manifest.csv'}"


def eval_pairs(model: USQNet, frames: list[np.ndarray], names: list[str], seed: int) -> dict[str, Any]:
    """Pairwise accuracy (clean > heavily degraded copy) per degradation, for the model and the baselines."""
    _, clean = model_outputs(model, frames)
    base_clean = baseline_scores(frames, names)
    res: dict[str, Any] = {"model": {}, **{n: {} for n in base_clean}}
    degraded_scores = []
    for kind in sorted(DEGRADATIONS):
        rng = np.random.default_rng((seed, 99))
        deg = [degrade(f, kind, heavy_severity(), rng) for f in frames]
        _, s = model_outputs(model, deg)
        degraded_scores.append(s)
        res["model"][kind] = metrics.pairwise_accuracy(clean, s)
        for n, b in baseline_scores(deg, names).items():
            res[n][kind] = metrics.pairwise_accuracy(base_clean[n], b)
    for r in res.values():
        r["mean"] = float(np.mean(list(r.values())))
    return {
        "pairwise_accuracy": res,
        "weak_view_consistency": weak_consistency(model, frames, clean, seed),
        "clean_scores": clean,
        "degraded_scores": np.concatenate(degraded_scores),
    }


def eval_graded(
    model: USQNet, frames: list[np.ndarray], grades: list[int], names: list[str], seed: int
) -> dict[str, Any]:
    logits, score = model_outputs(model, frames)
    rep = metrics.classification_report(grades, (logits.argmax(1) + 1).tolist(), score, model.config.num_grades)
    rep["weak_view_consistency"] = weak_consistency(model, frames, score, seed)
    rep["baselines"] = {
        n: {"srocc": metrics.srocc(grades, b), "pairwise_accuracy_all_pairs": metrics.ranking_pairs_accuracy(grades, b)}
        for n, b in baseline_scores(frames, names).items()
    }
    rep["scores"] = score
    return rep


def _plots(out: Path, result: dict[str, Any], mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 26).tolist()
    if mode == "pairs":
        ax.hist(result["clean_scores"], bins, alpha=0.6, density=True, label="clean (held-out)")
        ax.hist(result["degraded_scores"], bins, alpha=0.6, density=True, label="heavily degraded")
    else:
        s, g = np.asarray(result["scores"]), np.asarray(result["grades"])
        for grade in sorted(set(g.tolist())):
            ax.hist(s[g == grade], bins, alpha=0.5, label=f"grade {grade}")
    ax.set_xlabel("model score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
    if mode == "graded":
        cm = np.asarray(result["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm, cmap="Blues")
        labels = result["labels"]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted grade")
        ax.set_ylabel("true grade")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=100)
        plt.close(fig)


def _summary(result: dict[str, Any], mode: str, header: str) -> str:
    lines = [f"# usiqa-eval ({mode})", "", header, ""]
    if mode == "pairs":
        pa = result["pairwise_accuracy"]
        methods = list(pa)
        lines += ["Pairwise accuracy, clean > heavily degraded copy (ties count half):", ""]
        lines += ["| degradation | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for kind in list(pa["model"]):
            lines.append(f"| {kind} | " + " | ".join(f"{pa[m][kind]:.3f}" for m in methods) + " |")
    else:
        lines += [
            f"accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}, MAE {result['mae_grade']:.3f}, "
            f"SROCC {result['srocc']:.3f}, PLCC {result['plcc']:.3f}, "
            f"all-pairs accuracy {result['pairwise_accuracy_all_pairs']:.3f}",
            "",
            "| method | SROCC vs grade | all-pairs accuracy |",
            "|---|---|---|",
            f"| model | {result['srocc']:.3f} | {result['pairwise_accuracy_all_pairs']:.3f} |",
        ]
        for n, b in result["baselines"].items():
            lines.append(f"| {n} | {b['srocc']:.3f} | {b['pairwise_accuracy_all_pairs']:.3f} |")
    lines += [
        "",
        f"Weak-view consistency (mean |score change| under flip/rotation): {result['weak_view_consistency']:.4g}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="usiqa-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--data", help="graded dataset: CSV file,grade / folder-per-grade / folder with labels.csv")
    ap.add_argument("--pairs", action="store_true", help="synthetic pairs from the dev set's held-out groups")
    ap.add_argument("--real-us", default=str(REAL_US), help="dev set with manifest.csv (for --pairs)")
    ap.add_argument("--split", help="split JSON for --pairs (default: the one beside the checkpoint, if any)")
    ap.add_argument("--max-images", type=int, default=0, help="evaluate at most this many images (0 = all)")
    ap.add_argument("--baselines", default="all", help="comma list or 'all' or 'none'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="eval_out")
    args = ap.parse_args(argv)
    if bool(args.data) == bool(args.pairs):
        ap.error("give exactly one of --data or --pairs")
    names = list(available_baselines()) if args.baselines == "all" else [n for n in args.baselines.split(",") if n]
    names = [] if args.baselines == "none" else names
    out = Path(args.out)
    t0 = time.monotonic()
    try:
        loaded = load_checkpoint(args.checkpoint)
        if args.pairs:
            ckpt = Path(args.checkpoint)
            split_path = Path(args.split) if args.split else ckpt.with_name(ckpt.stem + ".split.json")
            keys, source = test_frames_of_dev_set(Path(args.real_us), split_path, args.seed)
            keys = sorted(keys)[: args.max_images or None]
            frames = [
                read_image(it)
                for it in load_manifest(Path(args.real_us) / "manifest.csv", verify=False)
                if it.key in set(keys)
            ]
            result = eval_pairs(loaded.model, frames, names, args.seed)
            header = f"Checkpoint `{loaded.model_id}`; {len(frames)} held-out frames ({source})."
            mode = "pairs"
        else:
            items = load_any(args.data)
            require_grades(items)
            items = items[: args.max_images or None]
            frames = [read_image(it) for it in items]
            grades = [int(it.grade) for it in items]  # type: ignore[arg-type]
            result = eval_graded(loaded.model, frames, grades, names, args.seed)
            result["grades"] = grades
            header = f"Checkpoint `{loaded.model_id}`; {len(frames)} images from `{args.data}`."
            mode = "graded"
    except (CheckpointError, DatasetError, ValueError, OSError) as e:
        print(f"usiqa-eval: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    result["checkpoint"] = loaded.model_id
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    _plots(out, result, mode)
    (out / "summary.md").write_text(_summary(result, mode, header))
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=lambda o: np.asarray(o).tolist()))
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
