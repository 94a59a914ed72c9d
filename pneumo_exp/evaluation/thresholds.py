"""The decision threshold of a registered version, chosen on validation only."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_curve

from pneumo_exp.evaluation.calibration import logit


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float) -> float:
    """A threshold with the highest specificity among those whose sensitivity reaches
    `min_sensitivity` (missed pneumonia is the costly error).

    Every threshold between the lowest PNEUMONIA score it must keep and the next NORMAL
    score below gives these same validation figures; the one returned lies midway between
    the two in logit space, the largest margin on both sides. (The top of that gap, right
    under the PNEUMONIA scores, loses the sensitivity as soon as another site's scores
    move down a little, which confident models make likely: their scores crowd near 1.)"""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(y_true, prob)
    reaching = np.flatnonzero(tpr >= min_sensitivity)  # roc_curve: thresholds decreasing
    best = reaching[np.argmin(fpr[reaching])]
    top = float(min(thresholds[best], 1.0))
    below = prob[(y_true == 0) & (prob < top)]
    if not len(below):
        return top
    return float(expit((logit(top) + logit(below.max())) / 2))
