"""Metrics against scipy/sklearn on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from usiqa_ros.core import metrics as m

Y_TRUE = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 3, 3, 5, 2, 4]
Y_PRED = [1, 2, 2, 4, 5, 4, 4, 3, 1, 1, 3, 5, 5, 2, 3]
SCORES = [0.05, 0.3, 0.35, 0.7, 0.95, 0.8, 0.72, 0.5, 0.1, 0.0, 0.5, 0.9, 0.99, 0.28, 0.55]


def test_classification_metrics_match_sklearn() -> None:
    labels = [1, 2, 3, 4, 5]
    assert m.accuracy(Y_TRUE, Y_PRED) == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert m.macro_f1(Y_TRUE, Y_PRED) == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))
    cm = m.confusion_matrix(Y_TRUE, Y_PRED, labels)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(Y_TRUE, Y_PRED, labels=labels))
    rates = m.per_class_rates(Y_TRUE, Y_PRED, labels)
    np.testing.assert_allclose(rates["sensitivity"], skm.recall_score(Y_TRUE, Y_PRED, average=None, labels=labels))
    np.testing.assert_allclose(rates["precision"], skm.precision_score(Y_TRUE, Y_PRED, average=None, labels=labels))
    # Specificity of class c = recall of "not c" in the one-vs-rest problem.
    for i, c in enumerate(labels):
        t = [int(y != c) for y in Y_TRUE]
        p = [int(y != c) for y in Y_PRED]
        assert rates["specificity"][i] == pytest.approx(skm.recall_score(t, p))


def test_correlations_and_errors_match_scipy() -> None:
    assert m.srocc(Y_TRUE, SCORES) == pytest.approx(stats.spearmanr(Y_TRUE, SCORES)[0])
    assert m.plcc(Y_TRUE, SCORES) == pytest.approx(stats.pearsonr(Y_TRUE, SCORES)[0])
    assert m.mae(Y_TRUE, Y_PRED) == pytest.approx(skm.mean_absolute_error(Y_TRUE, Y_PRED))
    assert np.isnan(m.srocc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_pairwise_accuracy_counts_ties_half() -> None:
    assert m.pairwise_accuracy([0.9, 0.5, 0.4, 0.2], [0.1, 0.5, 0.6, 0.1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # All-pairs version equals the share of concordant pairs: (1 + tau) / 2 when there are no ties.
    g = [1, 2, 3, 4, 5]
    s = [0.1, 0.3, 0.2, 0.8, 0.9]
    tau = stats.kendalltau(g, s)[0]
    assert m.ranking_pairs_accuracy(g, s) == pytest.approx((1 + tau) / 2)
    with pytest.raises(ValueError):
        m.pairwise_accuracy([], [])


def test_weak_view_consistency_and_report() -> None:
    assert m.weak_view_consistency([0.5, 0.2], [0.4, 0.5]) == pytest.approx(0.2)
    rep = m.classification_report(Y_TRUE, Y_PRED, SCORES)
    assert rep["confusion_matrix"] == skm.confusion_matrix(Y_TRUE, Y_PRED).tolist()
    assert rep["per_class"]["3"]["support"] == 4
    with pytest.raises(ValueError, match="not in labels"):
        m.confusion_matrix([1, 7], [1, 1], [1, 2])  # sklearn would drop the 7 silently
    # a grade absent from both sides still gets its row and a defined (zero) F1, as in the node's 5-grade report
    rates = m.per_class_rates([1, 2], [1, 1], [1, 2, 3])
    assert rates["f1"].tolist() == pytest.approx([2 / 3, 0.0, 0.0]) and rates["specificity"][2] == 1.0
