"""The decision threshold of a registered version, chosen on validation only."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_curve

from pneumo_exp.evaluation.calibration import logit


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
