"""Evaluation metrics for grade classifiers and quality scores: scikit-learn / scipy where they have the
metric, a few lines here where they do not (specificity, pairwise ranking accuracy, weak-view consistency).

Grades are integers 1..G; scores are continuous (higher = better quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn import metrics as skm

Values = Sequence[float] | npt.NDArray[Any]  # scores: a list or an array


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    """C[i, j] = number of items with true label labels[i] predicted as labels[j]. Unlike sklearn, a label
    outside `labels` is an error, not silently dropped (it would mean a grade out of range)."""
    unknown = sorted((set(y_true) | set(y_pred)) - set(labels))
    if unknown:
        raise ValueError(f"label {unknown[0]} not in labels {list(labels)}")
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must be of equal length")
    return np.asarray(skm.confusion_matrix(y_true, y_pred, labels=list(labels)), dtype=np.int64)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    return float(np.mean(t == p))


def per_class_rates(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-class precision, sensitivity (recall), specificity and F1 over `labels` (0 when undefined).
    Specificity (TN / (TN + FP), not in sklearn) comes from the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, labels).astype(np.float64)
    precision, sensitivity, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(labels), zero_division=0
    )
    fp = cm.sum(0) - np.diag(cm)
    tn = cm.sum() - cm.sum(1) - fp
    specificity = np.divide(tn, tn + fp, out=np.zeros_like(tn), where=(tn + fp) > 0)
    return {"precision": precision, "sensitivity": sensitivity, "specificity": specificity, "f1": f1}


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Mean F1 over `labels` (default: labels present in y_true or y_pred, as sklearn does)."""
    return float(
        skm.f1_score(y_true, y_pred, labels=None if labels is None else list(labels), average="macro", zero_division=0)
    )


def srocc(a: Values, b: Values) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(stats.spearmanr(x, y)[0])  # [0], not .statistic: scipy < 1.9 (Ubuntu 22.04's 1.8) lacks it


def plcc(a: Values, b: Values) -> float:
    """Pearson linear correlation (NaN when either side is constant)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(stats.pearsonr(x, y)[0])


def mae(a: Values, b: Values) -> float:
    return float(np.mean(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def pairwise_accuracy(better: Values, worse: Values) -> float:
    """Share of (better, worse) pairs whose scores are ordered correctly; a tie counts half (CRL-UIQA)."""
    b, w = np.asarray(better, float), np.asarray(worse, float)
    if b.shape != w.shape or b.size == 0:
        raise ValueError("better and worse must be non-empty and of equal length")
    return float(np.mean((b > w) + 0.5 * (b == w)))


def ranking_pairs_accuracy(grades: Sequence[int], scores: Values) -> float:
    """Pairwise accuracy over all item pairs with different true grades (ties in score count half)."""
    g, s = np.asarray(grades, float), np.asarray(scores, float)
    i, j = np.nonzero(g[:, None] > g[None, :])
    if i.size == 0:
        return float("nan")
    return pairwise_accuracy(s[i], s[j])


def weak_view_consistency(scores: Values, weak_scores: Values) -> float:
    """Mean |score(view) - score(weak view)|: how much a quality-preserving flip/rotation moves the score."""
    return mae(scores, weak_scores)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], scores: Values | None = None, num_grades: int = 5
) -> dict[str, Any]:
    """Every grade metric in one JSON-ready dict. `scores` (in [0, 1]) adds SROCC/PLCC/MAE/pairwise."""
    labels = list(range(1, num_grades + 1))
    cm = confusion_matrix(y_true, y_pred, labels)
    rates = per_class_rates(y_true, y_pred, labels)
    out: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "mae_grade": mae(y_true, y_pred),
        "confusion_matrix": cm.tolist(),
        "labels": labels,
        "per_class": {
            str(lab): {k: float(v[i]) for k, v in rates.items()} | {"support": int(cm[i].sum())}
            for i, lab in enumerate(labels)
        },
    }
    if scores is not None:
        s = np.asarray(scores, float)
        out["srocc"] = srocc(y_true, s)
        out["plcc"] = plcc(y_true, s)
        out["mae_score_grade"] = mae(y_true, 1 + s * (num_grades - 1))
        out["pairwise_accuracy_all_pairs"] = ranking_pairs_accuracy(y_true, s)
    return out
