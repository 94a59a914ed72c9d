"""A Keras Tuner search of one architecture, tracked in MLflow.

Tracking, per-trial seeding and the time budget attach at the tuner's hooks (`run_trial`,
`on_epoch_end`, `on_trial_end`) of Keras Tuner's own tuners; the oracle's state under
.pneumo/tuner/<arch>/<search>/ makes an interrupted search resume where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.src import config as kt_config  # DEBUG prints tracebacks of failed trials
from sklearn.utils.class_weight import compute_class_weight

from pneumo_exp import interrupts
from pneumo_exp.config import TUNER_DIR, ExperimentConfig
from pneumo_exp.data.dataset import TrainingData, load_training_data
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.pipeline import make_dataset
from pneumo_exp.errors import ConfigError, InterruptedByUser
from pneumo_exp.fileio import write_text_atomic
from pneumo_exp.hypermodels import HYPERMODELS, StudyHyperModel
from pneumo_exp.tracking import SearchTracker, log_classifier, log_epoch_metrics

log = logging.getLogger(__name__)
# A failed trial is one line (and its MLflow run's failure tag), unless --debug.
kt_config.DEBUG = bool(os.environ.get("PNEUMO_EXP_DEBUG"))


class SearchInterrupted(InterruptedByUser):
    """Ctrl-C: finished trials are kept; the same command resumes."""


def _save_state_atomic(path: str, state: dict[str, Any]) -> None:
    """Keras Tuner's state files, written whole or not at all (a kill -9 mid-write must not
    leave a truncated JSON that breaks resuming)."""
    write_text_atomic(path, json.dumps(state))


class DefaultFirst:
    """Oracle mixin: the first trial is the space's default point, i.e. the study's
    configuration, so every search has the study as its reference; the rest is the
    oracle's own choice. State files are written atomically."""

    def save(self) -> None:
        _save_state_atomic(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial: kt.engine.trial.Trial) -> None:
        _save_state_atomic(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                           trial.get_state())

    def _random_values(self) -> dict[str, Any] | None:
        if self._tried_so_far:
            return super()._random_values()
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                hps.values[hp.name] = hp.default
        return hps.values


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

    def save(self) -> None:
        if not self._is_worker():
            self.oracle.save()
        _save_state_atomic(self._get_tuner_fname(), self.get_state())

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        interrupts.check()
        # Trial i trains from seed + i whatever the order, so a resumed search reproduces it.
        search = self.tracker.cfg.search
        keras.utils.set_random_seed(search.seed + int(trial.trial_id))
        with self.tracker.trial_run(trial.trial_id, trial.hyperparameters.values) as run_id:
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
        if self.deadline and time.time() > self.deadline and self.oracle.remaining_trials:
            log.warning("time budget spent: no new trial starts.")
            self.oracle.max_trials = len(self.oracle.trials)


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
    """EarlyStopping on the objective, TerminateOnNaN and StopOnInterrupt, for trials and
    folds alike."""
    s = cfg.search
    return [keras.callbacks.EarlyStopping(monitor=s.objective, mode=s.direction,
                                          patience=s.patience,
                                          restore_best_weights=restore_best),
            keras.callbacks.TerminateOnNaN(), StopOnInterrupt()]


@dataclass(frozen=True)
class SearchResult:
    name: str
    experiment_id: str
    parent_run_id: str
    best_trial_id: str | None
    best_run_id: str | None
    best_metrics: dict[str, float]
    trials: dict[str, int]
    data: TrainingData


def make_hypermodel(cfg: ExperimentConfig, train_labels: np.ndarray) -> StudyHyperModel:
    """The configured architecture, with balanced class weights from the training labels."""
    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=train_labels)
    try:
        return HYPERMODELS[cfg.arch](
            input_shape=(cfg.data.image_size, cfg.data.image_size, cfg.data.channels),
            space=cfg.space, class_weight={0: float(weights[0]), 1: float(weights[1])},
            seed=cfg.search.seed, **cfg.model)
    except KeyError as e:
        raise ConfigError(f"no hypermodel for architecture '{cfg.arch}'; known: "
                          f"{', '.join(HYPERMODELS)}.") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.arch}: {e} (check 'model' and 'data' in "
                          f"experiments/{cfg.arch}.yaml).") from e


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
    tuner_class = TrackedHyperband if s.tuner == "hyperband" else TrackedTuner
    tuner = tuner_class(
        oracle, hypermodel, tracker=tracker, val=val,
        deadline=time.time() + s.time_budget_min * 60 if s.time_budget_min else None,
        directory=str(project_dir.parent), project_name=project_dir.name, overwrite=overwrite)
    _check_space(cfg, tuner)
    return tuner


def _check_space(cfg: ExperimentConfig, tuner: kt.Tuner) -> None:
    names = {hp.name for hp in tuner.oracle.get_space().space}
    unknown = sorted(set(cfg.space) - names)
    if unknown:
        raise ConfigError(f"'space.{unknown[0]}' is not a hyperparameter of {cfg.arch}; it has: "
                          f"{', '.join(sorted(names))}.")


def run_search(cfg: ExperimentConfig, name: str | None = None, fresh: bool = False,
               verbose: int = 1) -> SearchResult:
    """Search `cfg.arch`; resume the search of the same name if it was interrupted."""
    s = cfg.search
    keras.utils.set_random_seed(s.seed)
    data = load_training_data(cfg.data, s.seed)
    log.info("Data %s: train %d %s, validation %d %s%s (fingerprint %s, loaded in %.1f s%s).",
             data.root, len(data.train), data.train.class_counts(), len(data.val),
             data.val.class_counts(),
             f", {len(data.skipped)} files skipped" if data.skipped else "", data.fingerprint,
             data.load_seconds, " from the cache" if data.from_cache else "")
    name = name or f"{s.tuner}-{cfg.digest()}"
    project_dir = TUNER_DIR / cfg.arch / name
    hypermodel = make_hypermodel(cfg, data.train.labels)
    tracker = SearchTracker(cfg, name, project_dir)
    if fresh:
        project_dir.joinpath("mlflow_parent_run.json").unlink(missing_ok=True)
    tuner = make_tuner(cfg, hypermodel, tracker, data.val, project_dir, overwrite=fresh)
    parent = tracker.begin(data, {"class": type(tuner).__name__, "directory": project_dir})
    log.info("%s search '%s' of %s: MLflow experiment '%s', parent run %s.",
             "Resuming" if tracker.resumed else "Starting", name, cfg.arch,
             cfg.experiment_name, parent)
    callbacks = training_callbacks(cfg)
    if tuner.deadline:
        callbacks.append(Deadline(tuner.deadline))
    try:
        tuner.search(make_dataset(data.train, s.batch_size, shuffle=True, seed=s.seed),
                     validation_data=make_dataset(data.val, s.batch_size), epochs=s.epochs,
                     callbacks=callbacks, shuffle=False, verbose=verbose)  # shuffled by tf.data
    except KeyboardInterrupt:
        tracker.end(None, _trial_counts(tuner), status="KILLED")
        raise SearchInterrupted(
            f"search '{name}' interrupted; finished trials are kept. Run the same command "
            "again to resume, or add --fresh (FRESH=1) to start over.") from None
    except BaseException:
        tracker.end(None, _trial_counts(tuner), status="FAILED")
        raise
    best = _best(tuner, tracker)
    counts = _trial_counts(tuner)
    if tracker.resumed and not tracker.trials_this_session:
        log.info("Search '%s' already ran its %d trials: raise MAX_TRIALS to extend it, or add "
                 "FRESH=1 (--fresh) to start it over.", name, counts["trials"])
    tracker.end(best, counts)
    return SearchResult(name, tracker.experiment_id, parent, best and best["trial_id"],
                        best and best.get("run_id"), best["metrics"] if best else {}, counts,
                        data)


def _trial_counts(tuner: kt.Tuner) -> dict[str, int]:
    statuses = [t.status for t in tuner.oracle.trials.values()]
    return {"trials": len(statuses), "completed_trials": statuses.count("COMPLETED"),
            "failed_trials": sum(st in ("FAILED", "INVALID") for st in statuses)}


def _best(tuner: kt.Tuner, tracker: SearchTracker) -> dict[str, Any] | None:
    """The best trial by the tuner's objective, with the `best_val_*` figures its run logged
    for its best checkpoint (the same numbers on the parent as on the trial run)."""
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].status != "COMPLETED":
        return None
    trial = best[0]
    run_id = tracker.trial_run_id(trial.trial_id)
    logged = tracker.client.get_run(run_id).data.metrics if run_id else {}
    metrics = {k: v for k, v in logged.items() if k.startswith("best_val_")}
    return {"trial_id": trial.trial_id, "run_id": run_id, "metrics": metrics}
