"""A Keras Tuner search of one architecture, tracked in MLflow: `run_search`.

The data, the hypermodel, the tuner and the search's MLflow runs, put together once per
stage (fidelity.py); the oracles' state under .pneumo/tuner/<arch>/<search>/ makes an
interrupted search resume where it stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf

from pneumo_exp.config import TUNER_DIR, ExperimentConfig
from pneumo_exp.data.dataset import TrainingData, load_training_data
from pneumo_exp.errors import InterruptedByUser, UserError
from pneumo_exp.hypermodels import HYPERMODELS, build_hypermodel
from pneumo_exp.search.callbacks import Deadline, TimeBudgetSpent, training_callbacks
from pneumo_exp.search.distributed import Role, activate
from pneumo_exp.search.fidelity import (
    SCREEN,
    Stage,
    describe_plan,
    stage_config,
    stages,
    train_part,
)
from pneumo_exp.search.tuners import TrackedTuner, make_tuner, stop_new_trials
from pneumo_exp.tracking.names import FULL, STATUS_CUT
from pneumo_exp.tracking.search_tracker import SearchTracker

log = logging.getLogger(__name__)


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
    table: list[dict[str, Any]]  # a row per trial (tracking.search_record.trials_table)


def run_search(cfg: ExperimentConfig, name: str | None = None, fresh: bool = False,
               verbose: int = 2, role: Role | None = None, debug: bool = False,
               context: Mapping[str, Any] | None = None,
               lineage: Mapping[str, str] | None = None) -> SearchResult:
    """Search `cfg.arch` in its stages (fidelity.py), resuming the search of that name.
    `role`: chief or worker of a distributed search; `debug` prints a failed trial's
    traceback; a site search (adaptation/site_search.py) brings the hypermodel's `context`
    and the `lineage` its runs record."""
    s = cfg.search
    worker = role is not None and not role.is_chief
    pin_threads(cfg.train.threads)
    keras.utils.set_random_seed(s.seed)
    data = load_training_data(cfg.data, s.seed)
    log.info("Data %s: train %d %s, validation %d %s%s (fingerprint %s, loaded in %.1f s%s).",
             data.root, len(data.train), data.train.class_counts(), len(data.val),
             data.val.class_counts(),
             f", {len(data.skipped)} files skipped" if data.skipped else "", data.fingerprint,
             data.load_seconds, " from the cache" if data.from_cache else "")
    name = name or f"{s.tuner}-{cfg.digest()}"
    project_dir = TUNER_DIR / cfg.arch / name
    plan = stages(cfg)
    tracker = SearchTracker(cfg, name, project_dir, HYPERMODELS[cfg.arch].ui_params,
                            lineage)
    fresh = fresh and not worker  # only the chief (or a single process) starts over
    if fresh:
        tracker.forget()
    deadline = time.time() + s.time_budget_min * 60 if s.time_budget_min else None
    if worker:
        parent = tracker.attach(data, role.tuner_id)
        log.info("Worker %s of search '%s': trials go under MLflow parent run %s.",
                 role.tuner_id, name, parent)
    else:
        parent = tracker.begin(data, {"stages": ",".join(st.name for st in plan),
                                      "directory": project_dir,
                                      "distributed": role is not None},
                               distributed=role is not None)
        log.info("%s search '%s' of %s: MLflow experiment '%s', parent run %s.\nPlan: %s",
                 "Resuming" if tracker.resumed else "Starting", name, cfg.arch,
                 cfg.experiment_name, parent, describe_plan(cfg))
    screened: list[dict[str, Any]] | None = None
    try:
        with long_lived_objects_frozen():
            for i, stage in enumerate(plan):
                folder = project_dir / (stage.name if len(plan) > 1 else "")  # Keras Tuner's
                tuner = _run_stage(cfg, stage, data, tracker, folder, fresh, screened, deadline,
                                   verbose, debug, dataclasses.replace(role, port=role.port + i)
                                   if role else None, context or {})
                if stage.name == SCREEN and not worker:
                    screened = best_configurations(tuner, plan[-1].trials)
    except TimeBudgetSpent:
        c = _counts(tracker)
        cut = c["cut_trials"]
        log.warning("Time budget of %g min spent: %d of the %d planned trials completed%s. The "
                    "same command with a larger budget (TIME_BUDGET=, or none) finishes the "
                    "planned trials without redoing any%s", s.time_budget_min or 0,
                    c["completed_trials"], c["planned_trials"], f", {cut} cut short" if cut else "",
                    " (a cut trial runs again from its start)." if cut else ".")
    except KeyboardInterrupt:
        if not worker:
            tracker.end(None, _counts(tracker), status="KILLED")
        raise InterruptedByUser(
            f"search '{name}' interrupted; finished trials are kept. Run the same command "
            "again to resume, or add --fresh (FRESH=1) to start over.") from None
    except BaseException:
        if not worker:
            tracker.end(None, _counts(tracker), status="FAILED")
        raise
    if worker:
        return SearchResult(name, tracker.experiment_id, parent, None, None, {},
                            {"trials": tracker.trials_this_process}, data, [])
    best = tracker.best_so_far(FULL)
    best_run = (best[0], tracker.trial_run_id(best[0])) if best else None
    counts = _counts(tracker)
    if tracker.resumed and not tracker.trials_this_process:
        log.info("Search '%s' already ran its %d trials: raise MAX_TRIALS to extend it, or add "
                 "FRESH=1 (--fresh) to start it over.", name, counts["trials"])
    tracker.end(best_run, counts)
    metrics = tracker.best_figures(best_run[1]) if best_run else {}
    return SearchResult(name, tracker.experiment_id, parent, best_run and best_run[0],
                        best_run and best_run[1], metrics, counts, data,
                        tracker.table())


def _run_stage(cfg: ExperimentConfig, stage: Stage, data: TrainingData, tracker: SearchTracker,
               project_dir: Path, fresh: bool, screened: list[dict[str, Any]] | None,
               deadline: float | None, verbose: int, debug: bool,
               role: Role | None, context: Mapping[str, Any]) -> TrackedTuner:
    """One stage's Keras Tuner search: its data (resolution, part of train), hypermodel,
    tuner (its own oracle, on the next port in a distributed search) and callbacks."""
    stage_cfg = stage_config(cfg, stage, screened)
    if stage.image_size != cfg.data.image_size:
        data = load_training_data(stage_cfg.data, cfg.search.seed)
    train = train_part(data.train, stage.train_fraction, cfg.search.seed)
    if role is not None:
        activate(role)
    hypermodel = build_hypermodel(stage_cfg, train.labels, **context)
    tuner = make_tuner(stage_cfg, hypermodel, tracker, data.val, project_dir, overwrite=fresh,
                       stage=stage, deadline=deadline, fit_verbose=verbose, debug=debug)
    if role is not None and role.is_chief and deadline:  # the chief serves; a timer caps it
        timer = threading.Timer(max(0.0, deadline - time.time()), stop_new_trials,
                                [tuner.oracle])
        timer.daemon = True
        timer.start()
    callbacks = training_callbacks(stage_cfg, data.val.images, data.val.labels)
    if deadline:
        callbacks.append(Deadline(deadline, finish_trial=role is not None))
    # the tuner prints its own progress; Keras' epoch lines come with fit_verbose
    try:
        tuner.search(train, epochs=stage.epochs, callbacks=callbacks,  # batched per trial
                     shuffle=False, verbose=0)  # tf.data shuffles
    except RuntimeError as e:  # Keras Tuner gives up after failed trials in a row
        if "consecutive failures" not in str(e):
            raise
        last = str(e).split("\n", 1)[-1].strip()
        raise UserError(f"the search stopped: {tuner.oracle.max_consecutive_failed_trials} "
                        f"trials in a row failed, the last with: {last} Fix the setting it "
                        "names and run the same command again; the finished trials are "
                        "kept.") from None
    return tuner


def pin_threads(threads: int | None) -> None:
    """TensorFlow's intra- and inter-op threads of this process (None: its default), which
    decide how it splits its sums, so the last digits of every weight: pinned, a search gives
    the same trials on 1 core or 2, however busy the machine. Call before TensorFlow runs."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran an op in this process (e.g. tests)
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("TensorFlow is already running with its own thread count; "
                        "train.threads=%d does not apply in this process.", threads)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Within: the objects alive now are left out of Python's garbage collection passes,
    which Keras Tuner runs several times a trial over every long-lived object (docs/results.md,
    "Where a trial's time goes"); what a trial leaves is still collected."""
    if gc.get_freeze_count():  # an outer search froze them already
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def best_configurations(tuner: kt.Tuner, k: int) -> list[dict[str, Any]]:
    """The hyperparameters of the k best completed trials of a (screening) stage, best
    first, each once."""
    found: list[dict[str, Any]] = []
    for trial in tuner.oracle.get_best_trials(len(tuner.oracle.trials)):
        values = {n: v for n, v in trial.hyperparameters.values.items()
                  if not n.startswith("tuner/")}
        if trial.status == "COMPLETED" and values not in found:
            found.append(values)
    return found[:k]


def _counts(tracker: SearchTracker) -> dict[str, int]:
    """Trials run (each once, its latest run), completed, failed and cut by the time
    budget; and planned."""
    rows = tracker.rows()
    return {"trials": len(rows), "completed_trials": sum(r["finished"] for r in rows),
            "failed_trials": sum(r["status"].startswith("failed") for r in rows),
            "cut_trials": sum(r["status"].startswith(STATUS_CUT) for r in rows),
            "planned_trials": tracker.cfg.search.planned_trials}
