"""A site version's temperature and threshold, from all of the site's labelled images out of
fold: the validation fold scored by the version's members, each other fold by their trials'
configurations retrained without it, to the epoch of their checkpoints (why: docs/sites.md,
"4. A site version of its own"). Its counts there are what the version validated."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from pneumo_exp.config import RegistryConfig
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.pipeline import make_dataset
from pneumo_exp.data.split import group_codes, group_kfold
from pneumo_exp.errors import UserError
from pneumo_exp.evaluation.calibration import apply_temperature, choose_threshold, fit_temperature
from pneumo_exp.evaluation.metrics import binary_metrics
from pneumo_exp.evaluation.noise import Scored
from pneumo_exp.evaluation.report import Proportion, proportions
from pneumo_exp.hypermodels import build_hypermodel
from pneumo_exp.registry.selection import Candidate
from pneumo_exp.serving.model import Member, ensemble_probability
from pneumo_exp.text import literal
from pneumo_exp.tracking.names import FIDELITY_PARAM, OUT_OF_FOLD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """A temperature, and the decision threshold chosen on the probabilities it calibrates."""

    temperature: float
    threshold: float

    @classmethod
    def fit(cls, scores: Scored, min_sensitivity: float) -> Calibration:
        """A temperature fitted on `scores`, then the threshold on the calibrated ones."""
        temperature = fit_temperature(scores.labels, scores.prob)
        prob = apply_temperature(scores.prob, temperature)
        return cls(temperature, choose_threshold(scores.labels, prob, min_sensitivity))

    def apply(self, scores: Scored) -> np.ndarray:
        return apply_temperature(scores.prob, self.temperature)

    def proportions(self, scores: Scored) -> dict[str, Proportion]:
        """Sensitivity and specificity at the threshold, as counts (exact intervals)."""
        return proportions(binary_metrics(scores.labels, self.apply(scores), self.threshold))


@dataclass(frozen=True)
class OutOfFold(Calibration):
    """Every labelled image of the site, scored out of fold (before calibration), in how
    many folds, and the temperature and threshold chosen on them."""

    scores: Scored
    folds: int

    def figures(self) -> dict[str, float]:
        """The out-of-fold figures at the threshold, with exact intervals."""
        f = binary_metrics(self.scores.labels, self.apply(self.scores), self.threshold)
        out = {f"{OUT_OF_FOLD}auc": float(f["auc"]),
               f"{OUT_OF_FOLD}images": len(self.scores.labels), f"{OUT_OF_FOLD}folds": self.folds}
        for key, p in proportions(f).items():
            out[f"{OUT_OF_FOLD}{key}_at_thr"] = p.value
            (out[f"{OUT_OF_FOLD}{key}_at_thr_ci_low"],
             out[f"{OUT_OF_FOLD}{key}_at_thr_ci_high"]) = p.interval
        return out


def out_of_fold(candidates: Sequence[Candidate], members: Sequence[Member], val: Scored,
                context: Mapping[str, Any], registry: RegistryConfig) -> OutOfFold:
    """The members' mean probability on every labelled image of their site out of fold
    (`val`: theirs on the validation fold), and the temperature and threshold on it.
    `context`: the site hypermodel's (its base's members and training-site images)."""
    cfg = candidates[0].cfg
    data = load_training_data(cfg.data, cfg.search.seed)
    if cfg.data.validation != "split" or "val" in data.loads:
        raise UserError(f"a site version's threshold is chosen over its site's patient folds, "
                        f"and the data of {candidates[0].label}'s search ({data.root}) has a "
                        "val/ split of its own: give the site's images as one labelled folder "
                        "(NORMAL/ and PNEUMONIA/), validation cut by patient.")
    every = data.loads["train"].data
    n_splits = max(2, round(1 / cfg.data.val_fraction))
    folds = list(group_kfold(n_splits, cfg.search.seed).split(
        np.zeros(len(every)), every.labels, group_codes(every.groups)))
    if not np.array_equal(every.names[folds[0][1]], data.val.names):
        raise UserError(f"the validation of {candidates[0].label}'s search is not the first "
                        "of its site's patient folds (the folder changed since it ran?): "
                        "search again, then promote.")
    prob = np.empty(len(every))
    prob[folds[0][1]] = val.prob
    for k, (train, held) in enumerate(folds[1:], start=1):
        started = time.time()
        retrained = [Member(retrain(c, every.subset(train), context, cfg.search.seed + k),
                            c.cfg.data.image_size, c.cfg.data.channels) for c in candidates]
        prob[held] = ensemble_probability(
            retrained, {m.preprocessing: every.images[held] for m in members},
            views=registry.views)
        log.info("Fold %d of %d: %d member(s) retrained without its %d images (%.0f s).",
                 k + 1, n_splits, len(candidates), len(held), time.time() - started)
    scores = Scored(every.labels, prob)
    found = Calibration.fit(scores, registry.min_sensitivity)
    return OutOfFold(found.temperature, found.threshold, scores, n_splits)


class StopAfter(keras.callbacks.Callback):
    """Stop after `epochs` epochs, whatever the schedule was set for."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


def retrain(c: Candidate, train: LabeledImages, context: Mapping[str, Any],
            seed: int) -> keras.Model:
    """The trial's configuration trained again on `train`, on its schedule, to the epoch of
    its checkpoint (`best_epoch`, counted from 0; all its epochs where none is logged)."""
    best = c.trial.data.metrics.get("best_epoch")
    stop = [StopAfter(int(best) + 1)] if best is not None else []
    keras.utils.set_random_seed(seed)
    hp = kt.HyperParameters()
    hp.values.update({k: literal(v) for k, v in c.trial.data.params.items()
                      if not k.startswith(("tuner/", FIDELITY_PARAM))})
    hypermodel = build_hypermodel(c.cfg, train.labels, **context)
    model = hypermodel.build(hp)
    try:
        hypermodel.fit(hp, model, make_dataset(train, c.cfg.train.batch_size, shuffle=True,
                                               seed=seed),
                       epochs=c.cfg.train.epochs,
                       callbacks=[keras.callbacks.TerminateOnNaN(), *stop],
                       shuffle=False, verbose=0)
    except kt.errors.FailedTrialError as e:
        raise UserError(f"{c.label}, retrained without one of its site's folds to choose the "
                        f"threshold, failed: {e} Promote other trials (TOP=1, or --run).") from None
    return model
