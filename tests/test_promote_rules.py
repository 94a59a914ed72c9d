"""promote never packs a weak member: an ensemble unless it validates worse than its best
member beyond the validation noise, and only trials that ran their course at full
fidelity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo_exp.config import load_config
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.registry.promote import ensemble_or_best, member_scores
from pneumo_exp.search.callbacks import promotable
from pneumo_exp.serving.model import Member


@dataclass
class Scores:
    """A stand-in for a Keras model: it answers a fixed probability per image."""

    prob: np.ndarray

    def predict(self, images: np.ndarray, batch_size: int = 0, verbose: int = 0) -> np.ndarray:
        return self.prob[images[:, 0, 0, 0].astype(int)].reshape(-1, 1)


@dataclass
class Candidate:
    cfg: Any
    label: str


def _set(n: int) -> LabeledImages:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # each image says its index
    labels = np.array([0, 1] * (n // 2))
    names = np.array([f"i{k}" for k in range(n)])
    return LabeledImages(images, labels, names, names)


@pytest.mark.parametrize("weak", [True, False])
def test_the_ensemble_unless_it_validates_worse_than_its_best_member_beyond_noise(
        weak: bool) -> None:
    """Two members alike: their mean is kept, whichever validates a hair higher. A member no
    better than chance pulls the mean down beyond the noise: the good one alone."""
    rng = np.random.default_rng(0)
    val = _set(400)
    y = val.labels
    good = np.clip(y * 0.4 + rng.random(400) * 0.6, 0, 1)
    other = (np.clip(y * 0.4 + rng.random(400) * 0.6, 0, 1) if not weak
             else rng.random(400))  # no better than chance
    cfg = load_config("aug_cnn")
    candidates = [Candidate(cfg, "aug_cnn trial 3"), Candidate(cfg, "aug_cnn trial 7")]
    members = [Member(Scores(good), 1, 1), Member(Scores(other), 1, 1)]
    keep, why = ensemble_or_best(candidates, member_scores(members, [val, val]))
    if weak:
        assert keep == [0] and "worse beyond the validation noise" in why
        assert "aug_cnn trial 3" in why
    else:
        together = roc_auc_score(y, (good + other) / 2)
        best = max(roc_auc_score(y, good), roc_auc_score(y, other))
        assert keep == [0, 1] and "within the validation noise or better" in why
        assert abs(together - best) < 0.05  # alike, either way


@pytest.mark.parametrize(("status", "candidate"), [
    ("completed", True), ("early stopped after 6 epochs", True),
    ("below the median of earlier trials (stopped after 4 epochs)", False),
    ("constant output (stopped after 3 epochs)", False),
    ("no learning (validation AUC below 0.6)", False),
    ("cut by the time budget after 2 epochs; it runs again when the search resumes", False),
    ("time budget spent", False),
])
def test_what_may_be_promoted(status: str, candidate: bool) -> None:
    assert promotable(status) is candidate
