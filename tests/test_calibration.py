"""Calibration: the expected calibration error, the Brier score, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo_exp.evaluation.calibration import (
    apply_temperature,
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


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
