"""A Keras Tuner search of one architecture, tracked in MLflow: `run_search`.

The data, the hypermodel, the tuner (tuners.py) and the search's MLflow runs
(tracking.search_runs) are put together here; the oracle's state under
.pneumo/tuner/<arch>/<search>/ makes an interrupted search resume where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import keras
import keras_tuner as kt

from pneumo_exp.config import TUNER_DIR, ExperimentConfig
from pneumo_exp.data.dataset import TrainingData, load_training_data
from pneumo_exp.data.pipeline import make_dataset
from pneumo_exp.errors import InterruptedByUser
from pneumo_exp.hypermodels import build_hypermodel
from pneumo_exp.search.callbacks import Deadline, training_callbacks
from pneumo_exp.search.distributed import Role, activate
from pneumo_exp.search.tuners import make_tuner, stop_new_trials
from pneumo_exp.tracking.search_runs import SearchTracker, trials_table

log = logging.getLogger(__name__)


class SearchInterrupted(InterruptedByUser):
    """Ctrl-C: finished trials are kept; the same command resumes."""


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
    table: list[dict[str, Any]]  # a row per trial (tracking.search_runs.trials_table)


def run_search(cfg: ExperimentConfig, name: str | None = None, fresh: bool = False,
               verbose: int = 2, role: Role | None = None, debug: bool = False) -> SearchResult:
    """Search `cfg.arch`; resume the search of the same name if it was interrupted.

    With a `role`, this process is the chief (the oracle and the parent run) or a worker
    (trains trials) of a distributed search (distributed.py). `debug` prints the traceback
    of a failed trial."""
    s = cfg.search
    worker = role is not None and not role.is_chief
    if role is not None:
        activate(role)
    keras.utils.set_random_seed(s.seed)
    data = load_training_data(cfg.data, s.seed)
    log.info("Data %s: train %d %s, validation %d %s%s (fingerprint %s, loaded in %.1f s%s).",
             data.root, len(data.train), data.train.class_counts(), len(data.val),
             data.val.class_counts(),
             f", {len(data.skipped)} files skipped" if data.skipped else "", data.fingerprint,
             data.load_seconds, " from the cache" if data.from_cache else "")
    name = name or f"{s.tuner}-{cfg.digest()}"
    project_dir = TUNER_DIR / cfg.arch / name
    hypermodel = build_hypermodel(cfg, data.train.labels)
    tracker = SearchTracker(cfg, name, project_dir, hypermodel.ui_params)
    fresh = fresh and not worker  # only the chief (or a single process) starts over
    if fresh:
        tracker.forget()
    tuner = make_tuner(cfg, hypermodel, tracker, data.val, project_dir, overwrite=fresh,
                       fit_verbose=verbose, debug=debug)
    if worker:
        parent = tracker.attach(data, tuner.tuner_id)
        log.info("Worker %s of search '%s': trials go under MLflow parent run %s.",
                 tuner.tuner_id, name, parent)
    else:
        parent = tracker.begin(data, {"class": type(tuner).__name__,
                                      "directory": project_dir,
                                      "distributed": role is not None})
        log.info("%s search '%s' of %s: MLflow experiment '%s', parent run %s.",
                 "Resuming" if tracker.resumed else "Starting", name, cfg.arch,
                 cfg.experiment_name, parent)
        if role is not None and tuner.deadline:  # the chief serves; a timer ends the budget
            timer = threading.Timer(tuner.deadline - time.time(), stop_new_trials,
                                    [tuner.oracle])
            timer.daemon = True
            timer.start()
    callbacks = training_callbacks(cfg, data.val.images, data.val.labels)
    if tuner.deadline:
        callbacks.append(Deadline(tuner.deadline))
    t = cfg.train
    try:  # the tuner prints its own progress; Keras' epoch lines come with fit_verbose
        tuner.search(make_dataset(data.train, t.batch_size, shuffle=True, seed=s.seed),
                     epochs=t.epochs, callbacks=callbacks, shuffle=False,  # tf.data shuffles
                     verbose=0)
    except KeyboardInterrupt:
        if not worker:
            tracker.end(None, _trial_counts(tuner), status="KILLED")
        raise SearchInterrupted(
            f"search '{name}' interrupted; finished trials are kept. Run the same command "
            "again to resume, or add --fresh (FRESH=1) to start over.") from None
    except BaseException:
        if not worker:
            tracker.end(None, _trial_counts(tuner), status="FAILED")
        raise
    if worker:
        return SearchResult(name, tracker.experiment_id, parent, None, None, {},
                            {"trials": tracker.trials_this_session}, data, [])
    best = _best(tuner, tracker)
    counts = _trial_counts(tuner)
    if tracker.resumed and not tracker.trials_this_session:
        log.info("Search '%s' already ran its %d trials: raise MAX_TRIALS to extend it, or add "
                 "FRESH=1 (--fresh) to start it over.", name, counts["trials"])
    tracker.end(best, counts)
    metrics = tracker.best_figures(best[1]) if best else {}
    return SearchResult(name, tracker.experiment_id, parent, best and best[0],
                        best and best[1], metrics, counts, data,
                        trials_table(tracker.rows()))


def _trial_counts(tuner: kt.Tuner) -> dict[str, int]:
    statuses = [t.status for t in tuner.oracle.trials.values()]
    return {"trials": len(statuses), "completed_trials": statuses.count("COMPLETED"),
            "failed_trials": sum(st in ("FAILED", "INVALID") for st in statuses)}


def _best(tuner: kt.Tuner, tracker: SearchTracker) -> tuple[str, str] | None:
    """(trial id, run id) of the oracle's best trial: the best exact validation objective,
    the figure its run records as best_<objective>."""
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].status != "COMPLETED":
        return None
    run_id = tracker.trial_run_id(best[0].trial_id)
    return (best[0].trial_id, run_id) if run_id else None
