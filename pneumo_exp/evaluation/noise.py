"""How far apart two validation figures must be before they mean something: a bootstrap
interval of their difference over the validation images (docs/searching.md, "Validation
noise"). Two models scored on the same images are compared pairwise, so what the images
share cancels out; on different validation sets each is resampled on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from pneumo_exp.evaluation.metrics import CI_LEVEL, binary_metrics, spec_at_sens

RESAMPLES = 1000

# The verdicts' words, everywhere they are printed: the trials table, compare, promote.
NOISE = "the validation noise"
WITHIN, BEYOND = f"within {NOISE}", f"more than {NOISE}"
BEST, NEAR_BEST = "best", "≈ best"  # the trials table's vs_best column
NOISE_NOTE = (f"{NEAR_BEST}: {WITHIN} of the best trial of its fidelity (a paired bootstrap "
              "of the objective over the validation images, 95%): the data cannot rank "
              "them.")


@dataclass(frozen=True)
class Scored:
    """A model's probabilities on a labelled validation set."""

    labels: np.ndarray
    prob: np.ndarray


@dataclass(frozen=True)
class Difference:
    """a - b of one figure, with its bootstrap interval."""

    name: str
    a: float
    b: float
    low: float
    high: float
    paired: bool

    @property
    def value(self) -> float:
        return self.a - self.b

    @property
    def within_noise(self) -> bool:
        """The interval holds 0: the data cannot tell the two apart."""
        return self.low <= 0.0 <= self.high

    def describe(self) -> str:
        how = "paired, the same validation images" if self.paired else (
            "each on its own validation images")
        verdict = (f"{WITHIN}: the data cannot tell them apart" if self.within_noise
                   else BEYOND)
        return (f"{self.name} {self.a:.4f} vs {self.b:.4f}: difference {self.value:+.4f}, "
                f"{CI_LEVEL:.0%} interval [{self.low:+.4f}, {self.high:+.4f}] ({how}): "
                f"{verdict}")


def figure_function(name: str, sensitivity_target: float = 0.95
                    ) -> Callable[[np.ndarray, np.ndarray], float]:
    """The validation figure `name` (val_auc, val_loss, val_spec_at_sens, ...) of labels and
    probabilities; the common ones without computing the others."""
    key = name.removeprefix("val_").removeprefix("best_val_")
    if key == "auc":
        return lambda y, p: float(roc_auc_score(y, p))
    if key == "loss":
        return lambda y, p: float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if key == "spec_at_sens":
        return lambda y, p: spec_at_sens(y, p, sensitivity_target)
    return lambda y, p: binary_metrics(y, p, sensitivity_target=sensitivity_target)[key]


def resampled_auc(labels: np.ndarray, prob: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The AUC of each bootstrap resample at once: `counts` (resamples x images) says how
    often each image was drawn (the Mann-Whitney statistic with weights; ties count half)."""
    order = np.argsort(prob, kind="stable")
    labels, prob, counts = labels[order], prob[order], counts[:, order]
    _, start = np.unique(prob, return_index=True)  # groups of equal scores
    neg = np.add.reduceat(counts * (labels == 0), start, axis=1)
    pos = np.add.reduceat(counts * (labels == 1), start, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def difference(name: str, a: Scored, b: Scored, paired: bool, resamples: int = RESAMPLES,
               seed: int = 0, sensitivity_target: float = 0.95) -> Difference:
    """The figure of a minus that of b, and the bootstrap interval of the difference:
    paired (the same images drawn for both; they must be the same images in the same order)
    or independent."""
    f = figure_function(name, sensitivity_target)
    if paired and not np.array_equal(a.labels, b.labels):
        raise ValueError("a paired comparison needs the same validation images")
    rng = np.random.default_rng(seed)
    draws_a = rng.integers(0, len(a.labels), (resamples, len(a.labels)))
    draws_b = draws_a if paired else rng.integers(0, len(b.labels), (resamples, len(b.labels)))
    if f"{name}".endswith("auc"):
        values = (resampled_auc(a.labels, a.prob, _counts(draws_a))
                  - resampled_auc(b.labels, b.prob, _counts(draws_b)))
        values = values[np.isfinite(values)]
    else:
        values = np.array([f(a.labels[i], a.prob[i]) - f(b.labels[j], b.prob[j])
                           for i, j in zip(draws_a, draws_b, strict=True)
                           if len(np.unique(a.labels[i])) == len(np.unique(b.labels[j])) == 2])
    tail = (1 - CI_LEVEL) / 2 * 100
    return Difference(name, f(a.labels, a.prob), f(b.labels, b.prob),
                      float(np.percentile(values, tail)),
                      float(np.percentile(values, 100 - tail)), paired)


def _counts(draws: np.ndarray) -> np.ndarray:
    """(resamples x images) how often each image was drawn."""
    return np.array([np.bincount(d, minlength=draws.shape[1]) for d in draws], dtype=float)
