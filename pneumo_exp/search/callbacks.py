"""The Keras callbacks of every training run, trials and folds alike.

`ValidationFigures` comes first: it writes scikit-learn's exact validation figures into each
epoch's logs, so the oracle, EarlyStopping, the checkpoint, the console and MLflow read one
number. The others stop what is not worth finishing (docs/searching.md, "Searches")."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.evaluation.metrics import binary_metrics
from pneumo_exp.search import interrupts
from pneumo_exp.settings import VALIDATION_FIGURES

# Probabilities on every validation image within this of each other: the model answers
# the same whatever the image (it has collapsed, or not begun to learn).
CONSTANT_SPREAD = 1e-3
SPREAD_KEY = "val_spread"  # max - min of the validation probabilities, logged every epoch
NO_LEARNING_AUC = 0.6  # a best validation AUC below this is no better than guessing, near enough


class ValidationFigures(keras.callbacks.Callback):
    """Exact validation figures in each epoch's logs; stops a model whose output has been
    constant for `constant_epochs` epochs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, constant_epochs: int = 2,
                 sensitivity_target: float = 0.95) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.constant_epochs, self.sensitivity_target = constant_epochs, sensitivity_target
        self.constant_for = 0  # epochs in a row of constant output

    def __deepcopy__(self, memo: dict[int, Any]) -> ValidationFigures:
        """Keras Tuner copies the callbacks for every trial: share the images, reset state."""
        return ValidationFigures(self.images, self.labels, self.constant_epochs,
                                 self.sensitivity_target)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        prob = predict_in_batches(self.model, self.images, batch_size=256)
        if not np.all(np.isfinite(prob)):  # diverged: the hypermodel's fit names it
            logs.update({f"val_{k}": math.nan for k in VALIDATION_FIGURES})
            self.model.stop_training = True
            return
        figures = binary_metrics(self.labels, prob, sensitivity_target=self.sensitivity_target)
        logs.update({f"val_{k}": figures[k] for k in VALIDATION_FIGURES})
        logs[SPREAD_KEY] = float(prob.max() - prob.min())
        self.constant_for = self.constant_for + 1 if logs[SPREAD_KEY] < CONSTANT_SPREAD else 0
        if self.constant_for >= self.constant_epochs:
            self.model.stop_training = True


def predict_in_batches(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The numbers `predict` gives for the same batches, through `predict_on_batch`: without
    the pipeline and callbacks `predict` sets up at each call, which cost more than a few
    hundred small images (docs/results.md, "Where a trial's time goes")."""
    return np.concatenate([np.asarray(model.predict_on_batch(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)]).ravel()


class MedianStopping(keras.callbacks.Callback):
    """Stops a trial whose best objective after `min_epochs` epochs or more is worse than
    the median of what the earlier trials had reached by the same epoch."""

    def __init__(self, monitor: str, direction: str, earlier: Sequence[Sequence[float]],
                 min_epochs: int) -> None:
        super().__init__()
        self.monitor, self.direction, self.min_epochs = monitor, direction, min_epochs
        self.earlier = [list(c) for c in earlier if len(c)]
        self.values: list[float] = []
        self.stopped_at: int | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> MedianStopping:
        """Made for one trial: Keras Tuner's copy is this instance, so the tuner reads
        where it stopped."""
        return self

    def median_at(self, epoch: int) -> float | None:
        """Median over the earlier trials of their best value up to `epoch` (a trial that
        stopped before it counts with its final best)."""
        if not self.earlier:
            return None
        best = max if self.direction == "max" else min
        return float(np.median([best(c[:epoch + 1]) for c in self.earlier]))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.values.append(float(value))
        median = self.median_at(epoch)
        if epoch + 1 < self.min_epochs or median is None:
            return
        mine = max(self.values) if self.direction == "max" else min(self.values)
        if (mine < median) if self.direction == "max" else (mine > median):
            self.stopped_at = epoch
            self.model.stop_training = True


class StopOnInterrupt(keras.callbacks.Callback):
    """Raises a pending Ctrl-C/SIGTERM after each batch (see pneumo_exp.interrupts)."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()


class TimeBudgetSpent(BaseException):
    """The search's time budget ran out: it ends here, and resumes with a larger budget.
    Not an Exception, so Keras Tuner does not count it as a failed trial: the trial stays
    assigned, and runs again from its start when the search resumes."""

    def __init__(self, epochs: int = 0) -> None:
        super().__init__(f"time budget spent after {epochs} epochs")
        self.epochs = epochs


class Deadline(keras.callbacks.Callback):
    """At the end of the epoch in which the search's time budget runs out: cuts the trial
    (TimeBudgetSpent), or with `finish_trial` (a distributed search's worker) stops
    training, so the trial ends with the epochs it has."""

    def __init__(self, deadline: float, finish_trial: bool = False) -> None:
        super().__init__()
        self.deadline, self.finish_trial = deadline, finish_trial

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.time() <= self.deadline:
            return
        if not self.finish_trial:
            raise TimeBudgetSpent(epoch + 1)
        self.model.stop_training = True


def training_callbacks(cfg: ExperimentConfig, val_images: np.ndarray, val_labels: np.ndarray,
                       restore_best: bool = False) -> list[keras.callbacks.Callback]:
    """ValidationFigures first (the others read its figures), then EarlyStopping on the
    objective, TerminateOnNaN, StopOnInterrupt and, if configured, ReduceLROnPlateau or the
    cosine schedule."""
    s, t = cfg.search, cfg.train
    callbacks = [ValidationFigures(val_images, val_labels, s.constant_epochs,
                                   sensitivity_target=s.sensitivity_target),
                 keras.callbacks.EarlyStopping(monitor=s.objective, mode=s.direction,
                                               patience=t.patience,
                                               restore_best_weights=restore_best),
                 keras.callbacks.TerminateOnNaN(), StopOnInterrupt()]
    if t.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=s.objective, mode=s.direction, factor=0.3,
            patience=t.reduce_lr_patience, min_lr=1e-6))
    if t.lr_schedule == "cosine":
        callbacks.append(CosineDecayPerEpoch(t.epochs))
    return callbacks


class CosineDecayPerEpoch(keras.callbacks.Callback):
    """Keras' CosineDecay from the trial's learning rate to 0 over train.epochs, set at each
    epoch's start: a fixed epoch budget ends annealed (a Hyperband round resumes the curve
    from its epoch)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.schedule: keras.optimizers.schedules.CosineDecay | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        initial = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.schedule = keras.optimizers.schedules.CosineDecay(initial, self.epochs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.optimizer.learning_rate = float(self.schedule(epoch))


def promotable(status: str) -> bool:
    """Whether a trial that ended so is a candidate for promotion: it ran until its own
    early stopping or its epochs ran out; not one the median or constant-output rule
    stopped, that did not learn, or that the time budget cut."""
    return status == "completed" or status.startswith("early stopped")


def trial_status(history: Mapping[str, Sequence[float]], planned_epochs: int,
                 constant_epochs: int, below_median_at: int | None, out_of_time: bool) -> str:
    """How a trial that trained ended, in words for the table and the run's tag."""
    epochs = len(history.get("loss", []))
    spread = list(history.get(SPREAD_KEY, []))
    auc = [v for v in history.get("val_auc", []) if not math.isnan(v)]
    if len(spread) >= constant_epochs and all(s < CONSTANT_SPREAD
                                              for s in spread[-constant_epochs:]):
        return f"constant output (stopped after {epochs} epochs)"
    if below_median_at is not None:
        return f"below the median of earlier trials (stopped after {below_median_at + 1} epochs)"
    if auc and max(auc) < NO_LEARNING_AUC:
        return "no learning (validation AUC below 0.6)"
    if epochs < planned_epochs:
        return ("time budget spent" if out_of_time
                else f"early stopped after {epochs} epochs")
    return "completed"
