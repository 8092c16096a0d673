"""Reports of a scored bag (see bag_eval): per-frame CSV, timeline PNG, summary markdown + JSON, labels join
and agreement metrics, and the scores written back as a bag. ROS-free; every file is written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from usiqa_ros.core import bagio
from usiqa_ros.core.grades import GRADE_NAMES
from usiqa_ros.core.safe_io import atomic_open
from usiqa_ros.tools.bag_types import BagScores, FrameResult

# Score range of each grade band: the grade nearest to the expected grade 1 + 4 * score.
GRADE_BANDS = {g: (max(0.0, (g - 1.5) / 4), min(1.0, (g - 0.5) / 4)) for g in range(1, 6)}
BAND_COLORS = {1: "#d7191c", 2: "#fdae61", 3: "#ffffbf", 4: "#a6d96a", 5: "#1a9641"}


class LabelError(ValueError):
    """A labels CSV that cannot be used."""


# ------------------------------------------------------------------------------------------------ labels
@dataclass
class Labels:
    key: str  # "index" or "stamp"
    keys: list[int]  # frame index, or stamp in ns
    values: list[int]  # grade 1..5, or 1 = good / 0 = bad
    binary: bool
    path: str


def _parse_stamp_ns(text: str) -> int:
    """Seconds as a decimal string -> integer ns, exactly (no float rounding)."""
    return int(Decimal(text.strip()) * 1_000_000_000)


def load_labels(path: str | Path) -> Labels:
    """CSV with a key column (`index`, `stamp` in s, or `stamp_ns`) and a value column (`grade` 1-5 or
    `label` good/bad; `label` may also hold grades)."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as e:
        raise LabelError(f"labels {path}: {e}") from None
    if not rows:
        raise LabelError(f"labels {path}: no rows (need a header and one row per labelled frame)")
    cols = {c.strip().lower(): c for c in rows[0] if c}
    key = next((k for k in ("index", "stamp_ns", "stamp") if k in cols), None)
    val = next((k for k in ("grade", "label", "quality") if k in cols), None)
    if key is None or val is None:
        raise LabelError(
            f"labels {path}: need a key column (index, stamp, stamp_ns) and a value column (grade, label); "
            f"found {sorted(cols)}"
        )
    keys, raw = [], []
    for n, row in enumerate(rows, start=2):
        k, v = (row.get(cols[key]) or "").strip(), (row.get(cols[val]) or "").strip().lower()
        if not k and not v:
            continue
        try:
            keys.append(int(k) if key in ("index", "stamp_ns") else _parse_stamp_ns(k))
        except (ValueError, InvalidOperation):
            raise LabelError(f"labels {path} line {n}: bad {key} {k!r}") from None
        raw.append((n, v))
    words = {"good": 1, "bad": 0}
    binary = all(v in words for _, v in raw)
    values = []
    for n, v in raw:
        if binary:
            values.append(words[v])
        elif v in ("1", "2", "3", "4", "5"):
            values.append(int(v))
        else:
            raise LabelError(f"labels {path} line {n}: {v!r} is not a grade 1-5 (or use good/bad for every row)")
    return Labels("stamp" if key != "index" else "index", keys, values, binary, str(path))


def join_labels(frames: list[FrameResult], labels: Labels, tolerance_s: float) -> tuple[dict[int, int], int]:
    """frame index -> label; and the number of labels that matched no frame (nearest stamp within tolerance)."""
    out: dict[int, int] = {}
    missed = 0
    if labels.key == "index":
        valid = {f.index for f in frames}
        for k, v in zip(labels.keys, labels.values, strict=True):
            if k in valid:
                out[k] = v
            else:
                missed += 1
        return out, missed
    order = sorted(frames, key=lambda f: f.stamp_ns)
    stamps = [f.stamp_ns for f in order]
    tol = round(tolerance_s * 1e9)
    for k, v in zip(labels.keys, labels.values, strict=True):
        i = bisect_left(stamps, k)
        near = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
        j = min(near, key=lambda j: abs(stamps[j] - k)) if near else None
        if j is not None and abs(stamps[j] - k) <= tol:
            out[order[j].index] = v
        else:
            missed += 1
    return out, missed


def agreement_metrics(
    scores: np.ndarray, grades: np.ndarray, labels: np.ndarray, binary: bool, good_grade: int
) -> dict:
    """Accuracy and macro-F1 of the predicted grade (or of grade >= good_grade against good/bad labels), SROCC
    and pairwise accuracy of the score against the labels; definitions from `core.metrics`."""
    from usiqa_ros.core import metrics

    y = labels.astype(int).tolist()
    pred = ((grades >= good_grade).astype(int) if binary else grades.astype(int)).tolist()
    return {
        "n": len(y),
        "accuracy": metrics.accuracy(y, pred),
        "macro_f1": metrics.macro_f1(y, pred),
        "srocc": metrics.srocc(scores, labels),
        "pairwise_accuracy": metrics.ranking_pairs_accuracy(y, scores),
    }


# ------------------------------------------------------------------------------------------------ summary
def _stamp_s(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _moment(t: Any, t0: int) -> dict:
    return {
        "index": t.index,
        "stamp": _stamp_s(t.stamp_ns),
        "t": round((t.stamp_ns - t0) / 1e9, 3),
        "score": round(t.score, 4),
        "grade": t.grade,
    }


def build_summary(s: BagScores, label_info: dict | None) -> dict:
    scored = s.scored
    sc = np.array([f.score for f in scored], dtype=np.float64)
    t0 = s.frames[0].stamp_ns
    stamps = np.array([f.stamp_ns for f in s.frames], dtype=np.int64)
    dur = float(stamps.max() - stamps.min()) / 1e9
    dist = {str(g): sum(f.grade == g for f in scored) for g in range(1, 6)}
    stats = {}
    if len(sc):
        q = np.percentile(sc, [5, 25, 50, 75, 95])
        stats = {
            "mean": sc.mean(),
            "std": sc.std(),
            "min": sc.min(),
            "p5": q[0],
            "p25": q[1],
            "median": q[2],
            "p75": q[3],
            "p95": q[4],
            "max": sc.max(),
        }
        stats = {k: round(float(v), 4) for k, v in stats.items()}
    return {
        "bag": str(s.bag),
        "topic": s.topic,
        "message_type": s.msgtype,
        "model_id": s.model_id,
        "device": s.device,
        "batch": s.batch,
        "frames": len(s.frames),
        "scored": len(scored),
        "failed": dict(s.errors),
        "first_stamp": _stamp_s(int(stamps.min())),
        "duration_s": round(dur, 3),
        "recorded_fps": round((len(s.frames) - 1) / dur, 2) if dur > 0 else None,
        "grade_distribution": dist,
        "reference_views": s.references,
        "score": stats,
        "best": [_moment(t, t0) for t in s.best],
        "worst": [_moment(t, t0) for t in s.worst],
        "throughput": {
            "frames_per_s": round(s.throughput_fps, 2),
            "inference_frames_per_s": round(s.inference_fps, 2),
            "wall_s": round(s.wall_seconds, 3),
            "inference_s": round(s.inference_seconds, 3),
        },
        "labels": label_info,
    }


def summary_markdown(sm: dict) -> str:
    tp = sm["throughput"]
    lines = [
        f"# Bag evaluation: `{Path(sm['bag']).name}`",
        "",
        f"- topic `{sm['topic']}` ({sm['message_type']}), model `{sm['model_id']}` on {sm['device']}, batch {sm['batch']}",
        f"- frames: {sm['frames']} ({sm['scored']} scored"
        + (", failed: " + ", ".join(f"{k} {v}" for k, v in sm["failed"].items()) if sm["failed"] else "")
        + f") over {sm['duration_s']} s of recording"
        + (f" ({sm['recorded_fps']} fps)" if sm["recorded_fps"] else "")
        + f", first stamp {sm['first_stamp']}",
        f"- throughput: {tp['frames_per_s']} frames/s end to end ({tp['wall_s']} s), "
        f"inference alone {tp['inference_frames_per_s']} frames/s",
    ]
    if sm["score"]:
        st = sm["score"]
        lines.append(
            f"- score: mean {st['mean']:.3f} ± {st['std']:.3f}, median {st['median']:.3f}, "
            f"p5 {st['p5']:.3f}, p95 {st['p95']:.3f}, range {st['min']:.3f}–{st['max']:.3f}"
        )
    lines += ["", "| grade | frames | share |", "|---|---:|---:|"]
    n = max(sm["scored"], 1)
    for g in range(5, 0, -1):
        c = sm["grade_distribution"][str(g)]
        lines.append(f"| {g} {GRADE_NAMES[g]} | {c} | {100 * c / n:.1f} % |")
    for title, key in (("Best moments", "best"), ("Worst moments", "worst")):
        lines += ["", f"{title}:", "", "| frame | stamp | t (s) | score | grade |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {m['index']} | {m['stamp']} | {m['t']} | {m['score']:.3f} | {m['grade']} |" for m in sm[key]]
    lab = sm.get("labels")
    if lab:
        lines += ["", f"Labels (`{Path(lab['path']).name}`, {lab['kind']}, joined by {lab['joined_by']}):", ""]
        lines.append(f"- {lab['matched']} frames labelled, {lab['unmatched']} labels matched no frame")
        m = lab.get("metrics")
        if m:
            lines.append(
                f"- accuracy {_fmt(m['accuracy'])}, macro-F1 {_fmt(m['macro_f1'])}, SROCC {_fmt(m['srocc'])}, "
                f"pairwise accuracy {_fmt(m['pairwise_accuracy'])} (n = {m['n']})"
            )
    lines += ["", "![score timeline](timeline.png)", ""]
    return "\n".join(lines)


def console_summary(sm: dict) -> str:
    st, tp = sm["score"], sm["throughput"]
    dist = " ".join(f"{g}:{sm['grade_distribution'][str(g)]}" for g in range(1, 6))
    text = (
        f"{sm['frames']} frames on {sm['topic']} ({sm['scored']} scored), grades {dist}, "
        + (f"score mean {st['mean']:.3f} median {st['median']:.3f}, " if st else "")
        + f"{tp['frames_per_s']} frames/s"
    )
    if sm.get("labels") and sm["labels"].get("metrics"):
        m = sm["labels"]["metrics"]
        text += (
            f"\nlabels: accuracy {_fmt(m['accuracy'])} macro-F1 {_fmt(m['macro_f1'])} SROCC {_fmt(m['srocc'])} "
            f"pairwise {_fmt(m['pairwise_accuracy'])} (n={m['n']})"
        )
    return text


# ------------------------------------------------------------------------------------------------ files
def frames_csv(s: BagScores, labels: dict[int, int] | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["index", "stamp", "stamp_ns", "bag_time_ns", "frame_id", "grade", "score", "artifact_score", "view_score"]
    head += [f"p{g}" for g in range(1, 6)] + ["error"] + (["label"] if labels is not None else [])
    w.writerow(head)
    for f in s.frames:
        probs = [f"{p:.5f}" for p in f.probabilities] if f.probabilities is not None else [""] * 5
        row = [f.index, _stamp_s(f.stamp_ns), f.stamp_ns, f.log_ns, f.frame_id, f.grade]
        row += [f"{f.score:.5f}" if f.grade else ""]
        row += [f"{f.artifact_score:.5f}" if f.grade else "", f"{f.view_score:.5f}" if f.grade and s.references else ""]
        row += probs + [f.error]
        if labels is not None:
            row.append(labels.get(f.index, ""))
        w.writerow(row)
    return buf.getvalue()


def timeline_png(s: BagScores, path: Path, labels: dict[int, int] | None, binary: bool) -> None:
    """Score over time on the grade bands; underneath, thumbnails of the worst and best moments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = s.frames[0].stamp_ns
    scored = s.scored
    t = np.array([(f.stamp_ns - t0) / 1e9 for f in scored])
    y = np.array([f.score for f in scored])
    thumbs = s.worst + s.best
    fig = plt.figure(figsize=(12, 6.2 if thumbs else 4.2), dpi=100)
    ax = fig.add_axes((0.06, 0.42 if thumbs else 0.12, 0.86, 0.5 if thumbs else 0.78))
    for g, (lo, hi) in GRADE_BANDS.items():
        ax.axhspan(lo, hi, color=BAND_COLORS[g], alpha=0.25, lw=0)
        ax.text(
            1.005, (lo + hi) / 2, f"{g} {GRADE_NAMES[g]}", transform=ax.get_yaxis_transform(), va="center", fontsize=8
        )
    ax.plot(t, y, "-", color="#2b2b2b", lw=1.0, label="score" if not s.references else "score (view, artefact veto)")
    if s.references:
        ax.plot(t, [f.artifact_score for f in scored], "-", color="#2060b0", lw=0.7, alpha=0.7, label="artifact_score")
        ax.plot(t, [f.view_score for f in scored], "-", color="#c06000", lw=0.7, alpha=0.7, label="view_score")
    if labels:
        lt = [(f.stamp_ns - t0) / 1e9 for f in s.frames if f.index in labels]
        lv = [labels[f.index] for f in s.frames if f.index in labels]
        ly = [(0.75 if v else 0.25) for v in lv] if binary else [(v - 1) / 4 for v in lv]
        ax.scatter(lt, ly, s=14, marker="s", facecolors="none", edgecolors="#3050c0", label="label", zorder=3)
    failed = [(f.stamp_ns - t0) / 1e9 for f in s.frames if not f.grade]
    if failed:
        ax.scatter(failed, np.zeros(len(failed)), marker="x", color="k", label="not scored", zorder=3)
    for th, mk, col in [(x, "v", "#b00000") for x in s.worst] + [(x, "^", "#006000") for x in s.best]:
        ax.scatter([(th.stamp_ns - t0) / 1e9], [th.score], marker=mk, color=col, s=40, zorder=4)
    ax.set_xlim(0, max(float(t.max()) if len(t) else 0.0, 1e-3))
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"time since first frame (s), first stamp {_stamp_s(t0)}")
    ax.set_ylabel("quality score")
    ax.set_title(f"{s.bag.name}  {s.topic}  ({len(s.frames)} frames, model {s.model_id})", fontsize=10)
    ax.legend(loc="lower left", fontsize=8, ncol=3)
    n = len(thumbs)
    for i, th in enumerate(thumbs):
        w = 0.86 / max(n, 1)
        tax = fig.add_axes((0.06 + i * w + 0.004, 0.02, w - 0.008, 0.27))
        tax.imshow(th.image, cmap="gray", vmin=0, vmax=255)
        tax.set_xticks([])
        tax.set_yticks([])
        col = "#b00000" if i < len(s.worst) else "#006000"
        for sp in tax.spines.values():
            sp.set_color(col)
            sp.set_linewidth(2)
        tax.set_title(f"#{th.index} t={(th.stamp_ns - t0) / 1e9:.2f}s\n{th.score:.2f} (g{th.grade})", fontsize=7)
    if thumbs:
        fig.text(0.06, 0.325, "worst moments", color="#b00000", fontsize=9)
        fig.text(0.06 + 0.86 * len(s.worst) / n, 0.325, "best moments", color="#006000", fontsize=9)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_scores_bag(
    s: BagScores, path: Path, storage: str, quality_topic: str, merge_images: bool, replace: bool = False
) -> int:
    """QualityScore per scored frame (header = the image's, bag time = the image's), optionally with the
    source image messages copied unchanged. Returns the number of messages written."""
    n = 0
    with bagio.atomic_bag(path, storage, replace=replace) as w:
        qconn = bagio.add_quality_connection(w, quality_topic)
        iconn = bagio.add_image_connection(w, s.topic, s.msgtype) if merge_images else None
        images = _iter_raw_images(s) if merge_images else None
        for f in s.frames:
            if images is not None:
                log_ns, raw = next(images)
                w.write(iconn, log_ns, raw)
                n += 1
            if f.grade:
                m = bagio.quality_message(
                    f.stamp_ns, f.frame_id, f.score, f.grade, f.probabilities, s.model_id,
                    round(f.batch_seconds * 1e9), 0, f.artifact_score, f.view_score,
                )  # fmt: skip
                w.write(qconn, f.log_ns, bagio.serialize(m))
                n += 1
        w.set_custom_data("usiqa.source_bag", str(s.bag))
        w.set_custom_data("usiqa.model_id", s.model_id)
    return n


def _iter_raw_images(s: BagScores):
    with bagio.open_bag(s.bag) as reader:
        if not reader.is2:
            raise bagio.BagError("--merge-images needs a rosbag2 source (ROS 1 messages are not CDR)")
        for im in bagio.iter_images(reader, s.topic):
            yield im.log_ns, bytes(im.raw)


def write_reports(
    s: BagScores,
    out: str | Path,
    labels: Labels | None = None,
    stamp_tolerance_s: float = 0.005,
    good_grade: int = 3,
    scores_bag: Path | None = None,
    merge_images: bool = False,
    bag_storage: str = "sqlite3",
    quality_topic: str = "/quality",
    replace_bag: bool = True,
) -> dict:
    """Write every report into `out`; summary.json last. Returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    joined, label_info = None, None
    if labels is not None:
        joined, missed = join_labels(s.frames, labels, stamp_tolerance_s)
        label_info = {
            "path": labels.path,
            "kind": "good/bad" if labels.binary else "grades 1-5",
            "joined_by": labels.key
            if labels.key == "index"
            else f"nearest stamp within {stamp_tolerance_s * 1e3:g} ms",
            "matched": len(joined),
            "unmatched": missed,
            "metrics": None,
        }
        pairs = [(f.score, f.grade, joined[f.index]) for f in s.frames if f.index in joined and f.grade]
        if pairs:
            sc, gr, lv = (np.array(x) for x in zip(*pairs, strict=True))
            m = agreement_metrics(sc, gr, lv, labels.binary, good_grade)
            label_info["metrics"] = {k: _finite(v) for k, v in m.items()}
            if labels.binary:
                label_info["good_grade"] = good_grade
    with atomic_open(out / "frames.csv", "w", newline="") as f:
        f.write(frames_csv(s, joined))
    timeline_png(s, out / "timeline.png", joined, labels.binary if labels else False)
    if scores_bag is not None:
        write_scores_bag(s, Path(scores_bag), bag_storage, quality_topic, merge_images, replace=replace_bag)
    summary = build_summary(s, label_info)
    summary["outputs"] = {
        "frames_csv": "frames.csv",
        "timeline_png": "timeline.png",
        "summary_md": "summary.md",
        "scores_bag": str(scores_bag) if scores_bag is not None else None,
    }
    with atomic_open(out / "summary.md", "w") as f:
        f.write(summary_markdown(summary))
    with atomic_open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=_json_default)
        f.write("\n")
    return summary


def _finite(v: Any) -> Any:
    """Rounded float, None for NaN/inf (JSON has no NaN); other values unchanged."""
    if isinstance(v, float):
        return round(v, 4) if math.isfinite(v) else None
    return v


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
