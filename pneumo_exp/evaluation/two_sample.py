"""Do two sets of images come from one population? Two-sample tests on the features a
network sees, for the site check (docs/sites.md, "1. The site check"): a classifier test
(its cross-validated AUC is the size of the shift) and an MMD permutation test (is there
any shift at all?). Both take each side's patients (None: each image its own patient).
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


def _patients(reference_groups: np.ndarray | None, n_reference: int,
              site_groups: np.ndarray | None, n_site: int) -> np.ndarray:
    """Each image's patient over both sides, as integers (no patient on both sides)."""
    ref = (np.arange(n_reference) if reference_groups is None
           else np.unique(reference_groups, return_inverse=True)[1])
    site = (np.arange(n_site) if site_groups is None
            else np.unique(site_groups, return_inverse=True)[1])
    return np.r_[ref, ref.max(initial=-1) + 1 + site]


def classifier_auc(reference: np.ndarray, site: np.ndarray,
                   site_groups: np.ndarray | None = None, seed: int = 0,
                   reference_groups: np.ndarray | None = None) -> float:
    """The cross-validated AUC of a logistic regression telling `site` from `reference`
    (rows are images); the images of one patient stay in one fold."""
    x = np.concatenate([reference, site])
    y = np.r_[np.zeros(len(reference)), np.ones(len(site))]
    groups = _patients(reference_groups, len(reference), site_groups, len(site))
    folds = min(FOLDS, len(np.unique(groups[len(reference):])))
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=0.1, max_iter=2000, class_weight="balanced"))
    prob = cross_val_predict(model, x, y, groups=groups, method="predict_proba",
                             cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    return float(roc_auc_score(y, prob[:, 1]))


@dataclass(frozen=True)
class MMD:
    value: float  # the squared MMD
    p_value: float  # of no difference, by permutation of patients


def mmd_test(reference: np.ndarray, site: np.ndarray, resamples: int = RESAMPLES,
             seed: int = 0, reference_groups: np.ndarray | None = None,
             site_groups: np.ndarray | None = None) -> MMD:
    """The squared MMD between the two sets with a Gaussian kernel whose bandwidth is the
    median distance between their pooled rows, and its p-value over permutations of
    whole patients between the sets."""
    pooled = np.concatenate([reference, site])
    distances = euclidean_distances(pooled, squared=True)
    gamma = 1.0 / max(float(np.median(distances[distances > 0])), 1e-12)
    patients = _patients(reference_groups, len(reference), site_groups, len(site))
    # the kernel summed over each pair of patients, and each patient's images: the MMD of
    # any split of the patients reads from these
    members = np.zeros((patients.max() + 1, len(pooled)))
    members[patients, np.arange(len(pooled))] = 1.0
    sums = members @ np.exp(-gamma * distances) @ members.T
    counts = members.sum(axis=1)

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        ia, ib = a.astype(int), b.astype(int)
        na, nb = counts[ia].sum(), counts[ib].sum()
        return float(sums[np.ix_(ia, ia)].sum() / na ** 2 + sums[np.ix_(ib, ib)].sum() / nb ** 2
                     - 2 * sums[np.ix_(ia, ib)].sum() / (na * nb))

    first_site = patients[:len(reference)].max(initial=-1) + 1  # the site's patients follow
    units = np.arange(patients.max() + 1, dtype=float)
    result = permutation_test((units[:first_site], units[first_site:]), statistic,
                              permutation_type="independent", n_resamples=resamples,
                              alternative="greater", random_state=seed, vectorized=False)
    return MMD(float(result.statistic), float(result.pvalue))
