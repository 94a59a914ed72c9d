"""Whether a probability means what it says, and a one-parameter fix for it: the ECE (15
equal-width bins) and the Brier score; temperature scaling (Guo et al. 2017) divides the
logit by one T fitted on validation, which changes no ranking (the AUC). Then the decision
threshold of a registered version, chosen on validation only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.special import logit as _logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_curve

ECE_BINS = 15
_EPS = 1e-7


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, bins: int = ECE_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the equal-width bins of the probability of PNEUMONIA that hold an image: the
    observed PNEUMONIA frequency, the mean probability (scikit-learn's calibration_curve;
    a probability on an edge counts in the bin below) and the bin's share of the images.
    The reliability diagram draws them, the ECE weighs them."""
    y_true, prob = np.asarray(y_true, dtype=int).ravel(), np.asarray(prob, float).ravel()
    observed, predicted = calibration_curve(y_true, prob, n_bins=bins, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], prob),
                         minlength=bins)  # calibration_curve's bins, which it does not return
    return observed, predicted, counts[counts > 0] / len(prob)


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Mean |observed PNEUMONIA frequency - mean probability| over equal-width bins of the
    probability of PNEUMONIA, weighted by the bins' sizes."""
    observed, predicted, share = reliability_bins(y_true, prob, bins)
    return float(np.sum(share * np.abs(observed - predicted)))


def calibration_figures(y_true: np.ndarray, prob: np.ndarray, prefix: str = "") -> dict[
        str, float]:
    return {f"{prefix}ece": expected_calibration_error(y_true, prob),
            f"{prefix}brier": float(brier_score_loss(y_true, prob, pos_label=1))}


def logit(prob: np.ndarray) -> np.ndarray:
    """scipy's logit, the probabilities kept off 0 and 1 (a saturated sigmoid gives them)."""
    return _logit(np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities with their logits divided by `temperature`."""
    if temperature == 1.0:
        return np.asarray(prob, dtype=np.float64)
    return expit(logit(prob) / temperature)


def fit_temperature(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The T in [0.05, 20] minimizing the log loss of `apply_temperature(prob, T)`."""
    y_true = np.asarray(y_true, dtype=int).ravel()

    def nll(log_t: float) -> float:
        return float(log_loss(y_true, np.clip(apply_temperature(prob, float(np.exp(log_t))),
                                              _EPS, 1 - _EPS), labels=[0, 1]))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float) -> float:
    """A threshold with the highest specificity among those whose sensitivity reaches
    `min_sensitivity` (missed pneumonia is the costly error): of the thresholds that give
    these validation figures, the one midway in logit space between the lowest PNEUMONIA
    score kept and the next NORMAL score, so that another site's scores may move a little."""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(y_true, prob)
    reaching = np.flatnonzero(tpr >= min_sensitivity)  # roc_curve: thresholds decreasing
    best = reaching[np.argmin(fpr[reaching])]
    top = float(min(thresholds[best], 1.0))
    below = prob[(y_true == 0) & (prob < top)]
    if not len(below):
        return top
    return float(expit((logit(top) + logit(below.max())) / 2))
