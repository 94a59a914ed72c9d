"""Calibration: the expected calibration error, the Brier score, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit as _sigmoid
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.calibration import (
    apply_temperature,
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def test_calibrated_probabilities_have_a_small_error() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # each p is the true frequency
    assert expected_calibration_error(y, p) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert expected_calibration_error(y, overconfident) > 0.2


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.9, 0.9, 0.9])  # bins: {0.1}: |0-0.1|, {0.9 x3}: |1-0.9|
    assert expected_calibration_error(y, p) == pytest.approx(0.25 * 0.1 + 0.75 * 0.1)
    figures = calibration_figures(y, p, "val_")
    assert figures["val_brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_the_ece_and_the_diagram_share_scikit_learn_s_bins() -> None:
    """The ECE keeps its definition (15 equal-width bins weighted by their sizes, Guo et al.
    2017), and the reliability diagram draws the same bins' points."""
    rng = np.random.default_rng(2)
    p = rng.random(2000) ** 2
    y = (rng.random(2000) < p).astype(int)
    observed, predicted, share = reliability_bins(y, p)
    expected = calibration_curve(y, p, n_bins=15, strategy="uniform")
    np.testing.assert_array_equal(observed, expected[0])
    np.testing.assert_array_equal(predicted, expected[1])
    which = np.minimum((p * 15).astype(int), 14)
    filled = [b for b in range(15) if np.any(which == b)]
    np.testing.assert_allclose(share, [np.mean(which == b) for b in filled])
    by_hand = sum(np.mean(which == b) * abs(y[which == b].mean() - p[which == b].mean())
                  for b in filled)
    assert expected_calibration_error(y, p) == pytest.approx(by_hand, rel=1e-12)
    fig = plots.reliability_figure(y, p, 15, "Reliability, validation", {"before": p ** 0.5})
    (model,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "model"]
    np.testing.assert_array_equal(model.get_xdata(), predicted)
    np.testing.assert_array_equal(model.get_ydata(), observed)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["Perfectly calibrated", "model", "before"]
    plots.plt.close(fig)


def test_temperature_undoes_overconfidence_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < _sigmoid(z)).astype(int)
    overconfident = _sigmoid(2.5 * z)  # logits 2.5 times too large
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(2.5, rel=0.1)
    fixed = apply_temperature(overconfident, t)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, overconfident) / 3
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, overconfident), abs=1e-4)
