"""Do two sets of images come from one population? Two-sample tests on the features a
network sees (serving/features.py), for the site check.

- `classifier_auc`: a classifier two-sample test (Lopez-Paz and Oquab 2017). A logistic
  regression learns to tell the site's images from the reference's; its cross-validated
  AUC, with folds grouped by patient, is the size of the shift: 0.5 when nothing tells them
  apart, 1.0 when everything does. It reads like the model's own figures, and it does not
  move with the site's prevalence.
- `mmd_test`: the maximum mean discrepancy with a Gaussian kernel (median bandwidth) and
  its permutation p-value (scipy.stats.permutation_test): is there any shift at all?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import permutation_test
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FOLDS = 5
RESAMPLES = 199  # permutations of the MMD test: p-values down to 0.005


def classifier_auc(reference: np.ndarray, site: np.ndarray,
                   site_groups: np.ndarray | None = None, seed: int = 0) -> float:
    """The cross-validated AUC of a logistic regression telling `site` from `reference`
    (rows are images); the site's images of one patient (`site_groups`) stay in one fold."""
    x = np.concatenate([reference, site])
    y = np.r_[np.zeros(len(reference)), np.ones(len(site))]
    codes = (np.unique(site_groups, return_inverse=True)[1] if site_groups is not None
             else np.arange(len(site)))
    groups = np.r_[np.arange(len(reference)), len(reference) + codes]
    folds = min(FOLDS, len(np.unique(codes)))
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=0.1, max_iter=2000, class_weight="balanced"))
    prob = cross_val_predict(model, x, y, groups=groups, method="predict_proba",
                             cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    return float(roc_auc_score(y, prob[:, 1]))


@dataclass(frozen=True)
class MMD:
    value: float  # the squared MMD
    p_value: float  # of no difference, by permutation


def mmd_test(reference: np.ndarray, site: np.ndarray, resamples: int = RESAMPLES,
             seed: int = 0) -> MMD:
    """The squared MMD between the two sets with a Gaussian kernel whose bandwidth is the
    median distance between their pooled rows, and its permutation p-value."""
    pooled = np.concatenate([reference, site])
    distances = euclidean_distances(pooled, squared=True)
    gamma = 1.0 / max(float(np.median(distances[distances > 0])), 1e-12)
    kernel = np.exp(-gamma * distances)

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        ia, ib = a.astype(int), b.astype(int)
        return float(kernel[np.ix_(ia, ia)].mean() + kernel[np.ix_(ib, ib)].mean()
                     - 2 * kernel[np.ix_(ia, ib)].mean())

    index = np.arange(len(pooled), dtype=float)
    result = permutation_test((index[:len(reference)], index[len(reference):]), statistic,
                              permutation_type="independent", n_resamples=resamples,
                              alternative="greater", random_state=seed, vectorized=False)
    return MMD(float(result.statistic), float(result.pvalue))
