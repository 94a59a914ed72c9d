"""promote never packs a weak member: an ensemble only when it validates at least as well
as its best member, and only trials that ran their course at full fidelity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo_exp.config import load_config
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.registry.promote import ensemble_or_best
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
def test_the_ensemble_only_when_it_validates_at_least_its_best_member(weak: bool) -> None:
    rng = np.random.default_rng(0)
    val = _set(60)
    y = val.labels
    good = np.clip(y * 0.6 + rng.random(60) * 0.4, 0, 1)
    other = (np.clip(y * 0.6 + rng.random(60) * 0.4, 0, 1) if not weak
             else rng.random(60))  # no better than chance
    cfg = load_config("aug_cnn")
    candidates = [Candidate(cfg, "aug_cnn trial 3"), Candidate(cfg, "aug_cnn trial 7")]
    members = [Member(Scores(good), 1, 1), Member(Scores(other), 1, 1)]
    keep, why = ensemble_or_best(candidates, members, [val, val])
    together = roc_auc_score(y, (good + other) / 2)
    best = max(roc_auc_score(y, good), roc_auc_score(y, other))
    assert (together >= best) == (keep == [0, 1])
    if weak:
        assert keep == [0] and "below its best member's" in why and "trial 3 alone" in why
    else:
        assert "at least its best member's" in why


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
