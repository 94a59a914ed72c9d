"""Keras Tuner's tuners and oracles as pneumo-exp runs them: tracking, per-trial seeding,
stopping rules, progress and the time budget attach at the tuner's hooks; the oracles start
from the given points (kt_internals.py)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import keras_tuner as kt

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.pipeline import make_dataset
from pneumo_exp.errors import ConfigError
from pneumo_exp.hypermodels import StudyHyperModel
from pneumo_exp.search import interrupts
from pneumo_exp.search.callbacks import (
    MedianStopping,
    TimeBudgetSpent,
    promotable,
    trial_status,
)
from pneumo_exp.search.fidelity import Stage
from pneumo_exp.search.kt_internals import (
    GivenPointsFirst,
    ResumedRandomStarts,
    TunerMixin,
    allows,
    set_debug,
)
from pneumo_exp.text import describe, duration
from pneumo_exp.tracking.names import STATUS_CUT
from pneumo_exp.tracking.runs import log_metrics
from pneumo_exp.tracking.search_tracker import SearchTracker
from pneumo_exp.tracking.trials import log_classifier

log = logging.getLogger(__name__)


class RandomSearchOracle(GivenPointsFirst, kt.oracles.RandomSearchOracle):
    pass


class BayesianOptimizationOracle(GivenPointsFirst, ResumedRandomStarts,
                                 kt.oracles.BayesianOptimizationOracle):
    def populate_space(self, trial_id: str) -> dict[str, Any]:
        """The Gaussian process's proposal, unless it is no new point: then a random draw
        that is (no wasted trial)."""
        proposed = super().populate_space(trial_id)
        values = proposed.get("values")
        if proposed.get("status") == "RUNNING" and values and self._duplicate(values):
            values = self._random_values()
            if values is None:
                return {"status": "STOPPED", "values": None}
            proposed = {**proposed, "values": values}
        return proposed


class HyperbandOracle(GivenPointsFirst, kt.oracles.HyperbandOracle):
    pass


class TrackedTuner(TunerMixin, kt.Tuner):
    """A Keras Tuner tuner with a nested MLflow run and a seed per trial, the median
    stopping rule, a line of progress per trial, and the time budget: past it no trial
    starts, and the running one is cut, to run again when the search resumes."""

    def __init__(self, oracle: kt.Oracle, hypermodel: kt.HyperModel, *, tracker: SearchTracker,
                 val: LabeledImages, stage: Stage, cfg: ExperimentConfig,
                 deadline: float | None = None, fit_verbose: int = 0, **kwargs: Any) -> None:
        self.tracker, self.val, self.stage, self.cfg = tracker, val, stage, cfg
        self.deadline, self.fit_verbose = deadline, fit_verbose
        self._run_id: str | None = None
        self._started: dict[str, float] = {}
        # kt.Tuner directly: RandomSearch/Hyperband's constructors only build their oracle.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.wait_out_chief_restarts()

    def number(self, trial: kt.engine.trial.Trial) -> str:
        """The trial's number in the search (through the stages)."""
        return str(self.stage.offset + int(trial.trial_id))

    def pre_create_trial(self) -> None:
        super().pre_create_trial()
        if self.deadline and time.time() > self.deadline and not self.is_worker():
            raise TimeBudgetSpent

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        self._started[trial.trial_id] = time.time()
        defaults = self.hypermodel.defaults
        changed = {k: v for k, v in trial.hyperparameters.values.items()
                   if not k.startswith("tuner/") and defaults.get(k) != v}
        number = self.number(trial)
        what = ("the space's default point" if not changed
                else f"{describe(changed)}; the rest at the space's defaults")
        stage = "" if self.stage.full and not self.stage.offset else f" ({self.stage.name})"
        log.info("\nTrial %s%s [%d/%d], %s into the search: %s", number, stage, int(number) + 1,
                 self.tracker.cfg.search.planned_trials, duration(self.tracker.elapsed()), what)

    def run_trial(self, trial: kt.engine.trial.Trial, train: LabeledImages, *args: Any,
                  **kwargs: Any) -> Any:
        interrupts.check()
        cfg, number, stage = self.cfg, self.number(trial), self.stage
        # Trial i trains from seed + i, its batches in an order of its own, whatever ran
        # before it in this process: a resumed search or another worker reproduces it.
        seed = cfg.search.seed + int(number)
        keras.utils.set_random_seed(seed)
        batches = make_dataset(train, cfg.train.batch_size, shuffle=True, seed=seed)
        values = trial.hyperparameters.values
        median = MedianStopping(cfg.search.objective, cfg.search.direction,
                                self.tracker.objective_curves(stage.name),
                                cfg.search.median_stopping) if cfg.search.median_stopping else None
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), *([median] if median else [])]
        kwargs["verbose"] = self.fit_verbose
        with self.tracker.trial_run(number, values, self.tuner_id, stage.name,
                                    stage.params) as run_id:
            self._run_id = run_id
            try:
                histories = super().run_trial(trial, batches, *args, **kwargs)
            except TimeBudgetSpent as cut:
                self.tracker.set_trial_status(run_id, f"{STATUS_CUT} after {cut.epochs} "
                                              "epochs; it runs again when the search resumes")
                raise
            with warnings.catch_warnings():  # the fresh model has no optimizer state to load
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                model = self.load_model(trial)
            history = histories[-1].history
            initial_epoch = values.get("tuner/initial_epoch", 0)
            log_classifier(model, self.val, history, cfg.search.objective,
                           cfg.search.direction, initial_epoch=initial_epoch,
                           title=f"trial {number} of search {self.tracker.search_name}",
                           log_model=stage.full, reliability=stage.full,
                           gradcam_images=cfg.tracking.gradcam_images if stage.full else 0,
                           sensitivity_target=cfg.search.sensitivity_target)
            planned = values.get("tuner/epochs", values.get("epochs", cfg.train.epochs)) - (
                initial_epoch)  # Hyperband's round, or the trial's own epochs (site.py)
            status = trial_status(
                history, planned_epochs=planned,
                constant_epochs=cfg.search.constant_epochs,
                below_median_at=median.stopped_at if median else None,
                out_of_time=bool(self.deadline and time.time() > self.deadline))
            self.tracker.set_trial_status(run_id, status,
                                          candidate=stage.full and promotable(status))
            self.tracker.set_checkpoint_note(run_id, stage)
        return histories

    def on_epoch_end(self, trial: Any, model: keras.Model, epoch: int,
                     logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(trial, model, epoch, logs)
        if self._run_id and logs:
            log_metrics(self.tracker.client, self._run_id, logs, epoch)

    def on_trial_end(self, trial: Any) -> None:
        if trial.message:  # Keras Tuner keeps the traceback; one line says it
            last = trial.message.strip().splitlines()[-1]
            trial.message = last.split(": ", 1)[-1] if "Error: " in last else last
            if self._run_id:
                self.tracker.set_trial_status(self._run_id, f"failed: {trial.message}")
        super().on_trial_end(trial)
        self._run_id = None
        seconds = time.time() - self._started.pop(trial.trial_id, time.time())
        number, rows = self.number(trial), self.tracker.rows()
        log.info("%s", trial_ends(number, next((r for r in rows if r["trial"] == number), None),
                                  self.tracker.best_so_far(self.stage.name, rows), seconds,
                                  self.tracker.elapsed(),
                                  self.tracker.remaining_estimate(self.deadline)))


def trial_ends(trial_id: str, row: Mapping[str, Any] | None, best: tuple[str, float] | None,
               seconds: float, elapsed: float, remaining: float | None) -> str:
    """The console's line as a trial ends: its figures and status, the best so far, the
    time spent and an estimate of what remains."""
    if row is None:
        result = "no record"
    else:
        auc = row.get("val_auc")
        result = (f"val AUC {auc:.4f}, sensitivity {row['val_sensitivity']:.3f}, specificity "
                  f"{row['val_specificity']:.3f} at 0.5, {row['epochs']} epoch"
                  f"{'s' if row['epochs'] != 1 else ''}"
                  if auc is not None and not math.isnan(auc) else "no figures")
        result += f"; {row['status']}"
    line = f"Trial {trial_id} ended after {duration(seconds)}: {result.rstrip('.')}."
    if best:
        line += f" Best so far: trial {best[0]} ({best[1]:.4f})."
    line += f" Elapsed {duration(elapsed)}"
    if remaining:
        line += f", about {duration(remaining)} to go"
    return line + "."


def stop_new_trials(oracle: kt.Oracle) -> None:
    """The time budget of a distributed search is spent: the chief's oracle hands out no
    new trial."""
    if oracle.remaining_trials:
        log.warning("time budget spent: no new trial starts.")
        oracle.max_trials = len(oracle.trials)


class TrackedHyperband(TrackedTuner, kt.Hyperband):
    """Hyperband's epochs per round and warm starts, with the tracking above."""


def make_tuner(cfg: ExperimentConfig, hypermodel: StudyHyperModel, tracker: SearchTracker,
               val: LabeledImages, project_dir: Any, overwrite: bool, stage: Stage,
               deadline: float | None, fit_verbose: int, debug: bool) -> TrackedTuner:
    """The tuner of one stage of the search (`cfg` is the stage's configuration); a failed
    trial is one line (and its run's failure tag) unless `debug`, which prints its
    traceback."""
    set_debug(debug)
    s = cfg.search
    objective = kt.Objective(s.objective, s.direction)
    if s.tuner == "random":
        oracle = RandomSearchOracle(objective, max_trials=s.max_trials, seed=s.seed)
    elif s.tuner == "bayesian":
        # The given points count among the initial points: the Gaussian process proposes
        # once they and any random draws have completed.
        initial = max(s.num_initial_points, len(given_points(cfg))) \
            if s.num_initial_points else None
        oracle = BayesianOptimizationOracle(objective, max_trials=s.max_trials, seed=s.seed,
                                            num_initial_points=initial)
    else:
        oracle = HyperbandOracle(objective, max_epochs=cfg.train.epochs,
                                 factor=s.hyperband_factor, seed=s.seed)
        oracle.max_trials = s.max_trials  # Hyperband has no trial budget of its own
    oracle.given_points = given_points(cfg)
    tuner_class = TrackedHyperband if s.tuner == "hyperband" else TrackedTuner
    tuner = tuner_class(
        oracle, hypermodel, tracker=tracker, val=val, stage=stage, cfg=cfg,
        fit_verbose=fit_verbose, deadline=deadline, directory=str(project_dir.parent),
        project_name=project_dir.name, overwrite=overwrite)
    _check_space(cfg, tuner)
    return tuner


def given_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The trials to run first: the space's default point (the study's configuration)
    unless search.default_first is false, then search.initial_points."""
    return ([{}] if cfg.search.default_first else []) + [dict(p) for p in
                                                          cfg.search.initial_points]


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
