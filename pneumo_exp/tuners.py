"""Keras Tuner's tuners and oracles as pneumo-exp runs them.

Tracking (a nested MLflow run per trial), per-trial seeding and the time budget attach at
the tuner's hooks (`run_trial`, `on_epoch_end`, `on_trial_end`); the oracles start from the
study's configuration and write their state atomically, so an interrupted search resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
from keras_tuner.src import config as kt_config  # DEBUG prints tracebacks of failed trials

from pneumo_exp import interrupts
from pneumo_exp.config import ExperimentConfig
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.errors import ConfigError
from pneumo_exp.fileio import write_text_atomic
from pneumo_exp.hypermodels import StudyHyperModel
from pneumo_exp.records import log_classifier, log_epoch_metrics
from pneumo_exp.tracking import SearchTracker

log = logging.getLogger(__name__)
# A failed trial is one line (and its MLflow run's failure tag), unless --debug.
kt_config.DEBUG = bool(os.environ.get("PNEUMO_EXP_DEBUG"))


def _save_state_atomic(path: str, state: dict[str, Any]) -> None:
    """Keras Tuner's state files, written whole or not at all (a kill -9 mid-write must not
    leave a truncated JSON that breaks resuming)."""
    write_text_atomic(path, json.dumps(state))


class DefaultFirst:
    """Oracle mixin: the first trial is the space's default point, i.e. the study's
    configuration, so every search has the study as its reference; then the configured
    `initial_points` (known good configurations, over the defaults); the rest is the
    oracle's own choice. State files are written atomically."""

    initial_points: Sequence[Mapping[str, Any]] = ()

    def save(self) -> None:
        _save_state_atomic(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial: kt.engine.trial.Trial) -> None:
        _save_state_atomic(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                           trial.get_state())

    def _random_values(self) -> dict[str, Any] | None:
        tried = len(self._tried_so_far)
        if tried > len(self.initial_points):
            return super()._random_values()
        point = self.initial_points[tried - 1] if tried else {}
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                value = point.get(hp.name, hp.default)
                hps.values[hp.name] = value if allows(hp, value) else hp.default
        if self._duplicate(hps.values):  # the space no longer tells it from a tried point
            return super()._random_values()
        return hps.values


def allows(hp: kt.engine.hyperparameters.HyperParameter, value: Any) -> bool:
    """Whether `value` lies in the range of `hp` (a narrowed space may exclude it)."""
    if isinstance(hp, kt.engine.hyperparameters.Fixed):
        return value == hp.value
    if isinstance(hp, kt.engine.hyperparameters.Boolean):
        return isinstance(value, bool)
    if isinstance(hp, kt.engine.hyperparameters.Choice):
        return value in hp.values
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and hp.min_value <= value <= hp.max_value)


class DefaultFirstRandomSearchOracle(DefaultFirst, kt.oracles.RandomSearchOracle):
    pass


class DefaultFirstBayesianOptimizationOracle(DefaultFirst, kt.oracles.BayesianOptimizationOracle):
    pass


class DefaultFirstHyperbandOracle(DefaultFirst, kt.oracles.HyperbandOracle):
    pass


class TrackedTuner(kt.Tuner):
    """A Keras Tuner tuner with a nested MLflow run per trial, a seed per trial, and a time
    budget after which no new trial starts."""

    def __init__(self, oracle: kt.Oracle, hypermodel: kt.HyperModel, *, tracker: SearchTracker,
                 val: LabeledImages, deadline: float | None = None, **kwargs: Any) -> None:
        self.tracker, self.val, self.deadline = tracker, val, deadline
        self._run_id: str | None = None
        # kt.Tuner directly: RandomSearch/Hyperband's constructors only build their oracle.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def _populate_initial_space(self) -> None:
        """Keras Tuner builds the model once per conditional branch to find every
        hyperparameter. A branch that does not fit the image size (four blocks at 32 px)
        has declared its hyperparameters before it fails, and only fails its own trials."""
        build = self.hypermodel.build

        def declaring_build(hp: kt.HyperParameters) -> keras.Model | None:
            try:
                return build(hp)
            except kt.errors.FailedTrialError:
                return None

        self.hypermodel.build = declaring_build
        try:
            super()._populate_initial_space()
        finally:
            self.hypermodel.build = build

    def save(self) -> None:
        if not self._is_worker():
            self.oracle.save()
        _save_state_atomic(self._get_tuner_fname(), self.get_state())

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        interrupts.check()
        # Trial i trains from seed + i whatever the order, so a resumed search reproduces it.
        search = self.tracker.cfg.search
        keras.utils.set_random_seed(search.seed + int(trial.trial_id))
        with self.tracker.trial_run(trial.trial_id, trial.hyperparameters.values,
                                    self.tuner_id) as run_id:
            self._run_id = run_id
            histories = super().run_trial(trial, *args, **kwargs)
            with warnings.catch_warnings():  # the fresh model has no optimizer state to load
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                model = self.load_model(trial)
            log_classifier(model, self.val, histories[-1].history,
                           search.objective, search.direction,
                           initial_epoch=trial.hyperparameters.values.get("tuner/initial_epoch",
                                                                          0))
        return histories

    def on_epoch_end(self, trial: Any, model: keras.Model, epoch: int,
                     logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(trial, model, epoch, logs)
        if self._run_id and logs:
            log_epoch_metrics(self.tracker.client, self._run_id, epoch, logs)

    def on_trial_end(self, trial: Any) -> None:
        if trial.message:  # Keras Tuner keeps the traceback; one line says it
            trial.message = trial.message.strip().splitlines()[-1]
            log.warning("trial %s failed: %s", trial.trial_id, trial.message)
        super().on_trial_end(trial)
        if self.deadline and time.time() > self.deadline and not self._is_worker():
            stop_new_trials(self.oracle)


def stop_new_trials(oracle: kt.Oracle) -> None:
    """The time budget is spent: the oracle hands out no new trial."""
    if oracle.remaining_trials:
        log.warning("time budget spent: no new trial starts.")
        oracle.max_trials = len(oracle.trials)


class TrackedHyperband(TrackedTuner, kt.Hyperband):
    """Hyperband's epochs per round and warm starts, with the tracking above."""


class StopOnInterrupt(keras.callbacks.Callback):
    """Raises a pending Ctrl-C/SIGTERM after each batch (see pneumo_exp.interrupts)."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()


class Deadline(keras.callbacks.Callback):
    """Stops training at the end of the epoch in which the search's time budget runs out."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.time() > self.deadline:
            self.model.stop_training = True


def training_callbacks(cfg: ExperimentConfig, restore_best: bool = False) -> list[Any]:
    """EarlyStopping on the objective, TerminateOnNaN, StopOnInterrupt, and (if configured)
    ReduceLROnPlateau, for trials and folds alike."""
    s = cfg.search
    callbacks = [keras.callbacks.EarlyStopping(monitor=s.objective, mode=s.direction,
                                               patience=s.patience,
                                               restore_best_weights=restore_best),
                 keras.callbacks.TerminateOnNaN(), StopOnInterrupt()]
    if s.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=s.objective, mode=s.direction, factor=0.3,
            patience=s.reduce_lr_patience, min_lr=1e-6))
    return callbacks


def make_tuner(cfg: ExperimentConfig, hypermodel: StudyHyperModel, tracker: SearchTracker,
               val: LabeledImages, project_dir: Path, overwrite: bool) -> TrackedTuner:
    s = cfg.search
    objective = kt.Objective(s.objective, s.direction)
    if s.tuner == "random":
        oracle = DefaultFirstRandomSearchOracle(objective, max_trials=s.max_trials, seed=s.seed)
    elif s.tuner == "bayesian":
        oracle = DefaultFirstBayesianOptimizationOracle(objective, max_trials=s.max_trials,
                                                        seed=s.seed)
    else:
        oracle = DefaultFirstHyperbandOracle(objective, max_epochs=s.epochs,
                                             factor=s.hyperband_factor, seed=s.seed)
        oracle.max_trials = s.max_trials  # Hyperband has no trial budget of its own
    oracle.initial_points = list(s.initial_points)
    tuner_class = TrackedHyperband if s.tuner == "hyperband" else TrackedTuner
    tuner = tuner_class(
        oracle, hypermodel, tracker=tracker, val=val,
        deadline=time.time() + s.time_budget_min * 60 if s.time_budget_min else None,
        directory=str(project_dir.parent), project_name=project_dir.name, overwrite=overwrite)
    _check_space(cfg, tuner)
    return tuner


def _check_space(cfg: ExperimentConfig, tuner: kt.Tuner) -> None:
    """Names in `space` and `search.initial_points` must be hyperparameters; a point's value
    that the (overridden) space excludes gives way to the default."""
    space = {hp.name: hp for hp in tuner.oracle.get_space().space}
    keys = [(f"space.{k}", k) for k in cfg.space]
    for i, point in enumerate(cfg.search.initial_points):
        keys += [(f"search.initial_points[{i}].{k}", k) for k in point]
    for key, name in keys:
        if name not in space:
            raise ConfigError(f"'{key}' is not a hyperparameter of {cfg.arch}; it has: "
                              f"{', '.join(sorted(space))}.")
    for i, point in enumerate(cfg.search.initial_points):
        for name, value in point.items():
            if not allows(space[name], value):
                log.info("initial point %d: %s=%r is outside the space; it takes %r.", i,
                         name, value, space[name].default)
