"""Whether a probability means what it says, and a one-parameter fix for it.

Expected calibration error (ECE, 15 equal-width bins as in Guo et al. 2017) and the Brier
score measure it; temperature scaling (Guo et al.) divides the model's logit by a single
T > 0 fitted on validation by maximum likelihood, which changes no ranking (the AUC) and
moves the probabilities to match the observed frequencies.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss

ECE_BINS = 15
_EPS = 1e-7


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Mean |observed PNEUMONIA frequency - mean probability| over equal-width bins of the
    probability of PNEUMONIA, weighted by the bins' sizes."""
    y_true, prob = np.asarray(y_true, dtype=float).ravel(), np.asarray(prob, float).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(y_true[inside].mean() - prob[inside].mean())
    return float(error)


def calibration_figures(y_true: np.ndarray, prob: np.ndarray, prefix: str = "") -> dict[
        str, float]:
    return {f"{prefix}ece": expected_calibration_error(y_true, prob),
            f"{prefix}brier": float(brier_score_loss(y_true, prob, pos_label=1))}


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities with their logits divided by `temperature`."""
    if temperature == 1.0:
        return np.asarray(prob, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-logit(prob) / temperature))


def fit_temperature(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The T in [0.05, 20] minimizing the log loss of `apply_temperature(prob, T)`."""
    y_true = np.asarray(y_true, dtype=int).ravel()

    def nll(log_t: float) -> float:
        return float(log_loss(y_true, np.clip(apply_temperature(prob, float(np.exp(log_t))),
                                              _EPS, 1 - _EPS), labels=[0, 1]))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
