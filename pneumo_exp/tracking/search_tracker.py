"""The MLflow side of one search as it runs: its parent run (created, or reopened to
resume), the machine it runs on, a nested run per trial with its status and checkpoint
note, and the summary when it ends. What the runs tell is read through `SearchRecord`
(search_record.py), which it extends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.data.dataset import TrainingData
from pneumo_exp.errors import UserError
from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.fileio import write_text_atomic
from pneumo_exp.tracking.importance import (
    Importance,
    estimate,
    importance_figure,
    landscape_figure,
    parallel_figure,
)
from pneumo_exp.tracking.machine import MACHINE_PREFIX, cpu_kind, machine_record
from pneumo_exp.tracking.names import (
    FULL,
    IMPORTANCE_PLOTS,
    IMPORTANCE_TABLE,
    IMPORTANCE_TEXT,
    ROLE_SEARCH,
    ROLE_TRIAL,
    SCREEN,
    SEARCH_PROGRESS_PLOT,
    STATUS_CUT,
    TAG_ARCH,
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_CANDIDATE,
    TAG_CHECKPOINT,
    TAG_FIDELITY,
    TAG_MACHINE,
    TAG_MAX_TRIALS,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SPLIT,
    TAG_STATUS,
    TAG_TIME_BUDGET,
    TAG_TRIAL,
    TAG_TRIALS_COMPLETED,
    TAG_TRIALS_CUT,
    TAG_TRIALS_PLANNED,
    TAG_TUNER,
    TRIAL_MODEL,
    TRIALS_TABLE,
    TRIALS_TEXT,
    plot,
)
from pneumo_exp.tracking.queries import children, quoted
from pneumo_exp.tracking.runs import (
    child_run,
    create_parent_run,
    log_data_description,
    log_metrics,
    log_table,
)
from pneumo_exp.tracking.search_record import (
    SearchRecord,
    format_table,
    progress_kind,
    trials_table,
)
from pneumo_exp.tracking.store import connect, experiment_id

log = logging.getLogger(__name__)


class SearchTracker(SearchRecord):
    """The MLflow side of one search, identified by its architecture and search name."""

    def __init__(self, cfg: ExperimentConfig, search_name: str, project_dir: Path,
                 key_params: Sequence[str] = (), lineage: Mapping[str, str] | None = None
                 ) -> None:
        client = connect()
        super().__init__(client, cfg, search_name,
                         experiment_id(client, cfg.experiment_name, key_params,
                                       cfg.search.objective))
        self._run_file = project_dir / "mlflow_parent_run.json"
        self.resumed = False
        self._started = time.time()
        self._previous_wall_time = 0.0
        self.trials_this_process = 0
        self.data_fingerprint: str | None = None  # of the data this process trains on
        self.lineage = dict(lineage or {})  # a site search's base version and site

    # ---- parent run -------------------------------------------------------------------
    def forget(self) -> None:
        """Start over (--fresh): the next `begin` creates a new parent run."""
        self._run_file.unlink(missing_ok=True)

    def begin(self, data: TrainingData, tuner_settings: Mapping[str, Any],
              distributed: bool = False) -> str:
        """Reopen the search's parent run if it exists (resume), else create it. A
        single process closes the trial runs its previous life left RUNNING; in a
        distributed search the workers do (a restarted chief's workers still run theirs)."""
        previous = self._previous_parent()
        if previous:
            self.parent_run_id, self.resumed = previous, True
            self._previous_wall_time = float(
                self.client.get_run(previous).data.metrics.get("wall_time_s", 0))
            self.client.update_run(previous, status="RUNNING")
            if not distributed:
                self._close_stale_trial_runs()
        else:
            self.parent_run_id = create_parent_run(
                self.client, self.experiment_id, self.cfg, f"search-{self.search_name}",
                ROLE_SEARCH, data.fingerprint, {TAG_SEARCH: self.search_name, **self.lineage},
                {f"tuner.{k}": v for k, v in tuner_settings.items()})
            write_text_atomic(self._run_file, json.dumps({"run_id": self.parent_run_id}))
            log_data_description(self.client, self.parent_run_id, data.root,
                                 {"train": data.train, "val": data.val}, data.skipped)
        self.data_fingerprint = data.fingerprint
        self._record_machine()
        s = self.cfg.search  # budgets may grow when a search is extended: tags, not params
        self._tag(self.parent_run_id, {
            TAG_MAX_TRIALS: s.planned_trials, TAG_TIME_BUDGET: s.time_budget_min,
            TAG_SPLIT: "{} screened + {} full".format(*s.split)})
        return self.parent_run_id

    def _tag(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tags in one request, each value as str() writes it (as set_tag does)."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _record_machine(self) -> None:
        """The machine record on the parent run; a search resumed on another kind of CPU
        says that its trials from now on are not those the first machine would give."""
        record = machine_record(self.cfg.train.threads)
        before = self.client.get_run(self.parent_run_id).data.tags
        keys = (f"{MACHINE_PREFIX}cpu", f"{MACHINE_PREFIX}isa")
        was, now = tuple(before.get(k) for k in keys), tuple(record[k] for k in keys)
        if self.resumed and was[1] and was != now:
            log.warning("search '%s' began on another kind of CPU (%s; %s) than this one "
                        "(%s; %s): TensorFlow's kernels differ, so the trials run from here "
                        "on give other figures than they would have there.", self.search_name,
                        *was, *now)
        self._tag(self.parent_run_id, record)

    def _previous_parent(self) -> str | None:
        if not self._run_file.is_file():
            return None
        run_id = json.loads(self._run_file.read_text())["run_id"]
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("the MLflow run %s of search %s is gone; starting a new parent run.",
                        run_id, self.search_name)
            return None
        return run_id if run.info.lifecycle_stage == "active" else None

    def attach(self, data: TrainingData, tuner_id: str, timeout: float = 600) -> str:
        """A worker of a distributed search: find the parent run its chief opened (by the
        search's name), and close the runs a previous life of this worker left RUNNING."""
        self.data_fingerprint = data.fingerprint
        deadline = time.time() + timeout
        while True:
            runs = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{TAG_ROLE}` = {quoted(ROLE_SEARCH)} and "
                f"tags.`{TAG_SEARCH}` = {quoted(self.search_name)} and "
                "attributes.status = 'RUNNING'",
                order_by=["attributes.start_time DESC"], max_results=1)  # the newest only
            if runs:
                self.parent_run_id = runs[0].info.run_id
                break
            if time.time() > deadline:
                raise UserError(
                    f"no running search '{self.search_name}' in MLflow experiment "
                    f"'{self.cfg.experiment_name}' at {mlflow.get_tracking_uri()}: start the "
                    "chief first, with the same configuration (or --name) and tracking URI.")
            time.sleep(2)
        self._close_stale_trial_runs(f" and tags.`{TAG_TUNER}` = {quoted(tuner_id)}")
        return self.parent_run_id

    def _close_stale_trial_runs(self, extra_filter: str = "") -> None:
        """Trial runs left RUNNING by a killed process end as KILLED."""
        for run in children(self.client, self.experiment_id, self.parent_run_id,
                            f" and attributes.status = 'RUNNING'{extra_filter}"):
            self.client.set_terminated(run.info.run_id, status="KILLED")
            log.info("trial run %s (trial %s) was left running by an interrupted search; "
                     "marked KILLED.", run.info.run_id, run.data.tags.get(TAG_TRIAL))

    def end(self, best: tuple[str, str] | None, counts: Mapping[str, int],
            status: str = "FINISHED") -> None:
        """Summary metrics and the trials table for comparing searches, then close the
        parent run. `best` is (trial id, run id) of the best trial."""
        assert self.parent_run_id
        self._tag(self.parent_run_id, {tag: counts[key] for tag, key in (
            (TAG_TRIALS_PLANNED, "planned_trials"), (TAG_TRIALS_COMPLETED, "completed_trials"),
            (TAG_TRIALS_CUT, "cut_trials")) if key in counts})
        if self.trials_this_process or not self.resumed:
            metrics = {f"n_{k}": float(v) for k, v in counts.items()}
            metrics["wall_time_s"] = self.elapsed()
            if best:
                trial_id, run_id = best
                metrics.update(self.best_figures(run_id))
                self._tag(self.parent_run_id, {TAG_BEST_TRIAL: trial_id, TAG_BEST_RUN: run_id})
            log_metrics(self.client, self.parent_run_id, metrics)
            log_trials(self)
            log_importance(self)
        self.client.set_terminated(self.parent_run_id, status=status)

    def elapsed(self) -> float:
        """Seconds this search has run, over every process that ran it (a resumed search)."""
        return self._previous_wall_time + time.time() - self._started

    # ---- trial runs -------------------------------------------------------------------
    def trial_run(self, trial_id: str, hyperparameters: Mapping[str, Any], tuner_id: str,
                  fidelity: str = FULL, fidelity_params: Mapping[str, Any] | None = None
                  ) -> contextlib.AbstractContextManager[str]:
        """The nested run of one trial, with every hyperparameter and its fidelity (image
        size, part of train, epochs) as params."""
        self.trials_this_process += 1
        assert self.parent_run_id
        return child_run(self.experiment_id, self.parent_run_id, f"trial-{trial_id}",
                         ROLE_TRIAL, self.data_fingerprint,
                         {TAG_SEARCH: self.search_name, TAG_TRIAL: trial_id,
                          TAG_ARCH: self.cfg.arch, TAG_TUNER: tuner_id, TAG_FIDELITY: fidelity,
                          TAG_MACHINE: cpu_kind(), **self.lineage},
                         {**hyperparameters, **(fidelity_params or {})})

    def set_trial_status(self, run_id: str, status: str, candidate: bool = False) -> None:
        """How a trial ended, and whether promote may package it."""
        self._tag(run_id, {TAG_STATUS: status[:500], TAG_CANDIDATE: str(candidate).lower()})

    def set_checkpoint_note(self, run_id: str, stage: Any) -> None:
        """Where the trial's best checkpoint is; a screened trial says why it keeps none (its
        run's description in the MLflow UI, and a tag)."""
        if stage.full:
            self.client.set_tag(run_id, TAG_CHECKPOINT, f"logged model '{TRIAL_MODEL}'")
            return
        note = (f"Screened trial: {stage.image_size} px, {stage.train_fraction:.0%} of train, "
                f"{stage.epochs} epochs. It keeps no checkpoint (a low-fidelity network is "
                "never promoted); its configuration is trained at full fidelity if it ranks "
                "among the best of the screening. Its curves, validation confusion matrix "
                "and ROC are here.")
        self._tag(run_id, {TAG_CHECKPOINT: "none: a screened trial", MLFLOW_RUN_NOTE: note})


def log_trials(record: SearchRecord) -> None:
    """The trials table (an MLflow table) and their objective against time (a plot)."""
    rows = record.rows()
    if not rows:
        return
    table = trials_table(rows, record.vs_best(rows))
    log_table(record.client, record.parent_run_id, pd.DataFrame(table), TRIALS_TABLE)
    record.client.log_text(record.parent_run_id, format_table(table) + "\n", TRIALS_TEXT)
    name = record.cfg.search.objective
    fig = plots.search_progress_figure(
        [(r["trial"], r["ended_s"], r.get(name), progress_kind(r)) for r in rows
         if r.get(name) is not None or r["status"].startswith(STATUS_CUT)],
        name, record.cfg.search.direction, f"search {record.search_name} ({record.cfg.arch})")
    record.client.log_figure(record.parent_run_id, fig, SEARCH_PROGRESS_PLOT)
    plt.close(fig)


def log_importance(record: SearchRecord) -> Importance | None:
    """Hyperparameter importance over the finished trials of the fidelity with the
    most of them, its plots and the landscape, on the parent run."""
    rows = [r for r in record.rows() if r["finished"]]
    fidelity = max((SCREEN, FULL), key=lambda f: sum(r["fidelity"] == f for r in rows))
    imp = estimate([r for r in rows if r["fidelity"] == fidelity],
                   record.cfg.search.objective, record.cfg.search.direction, fidelity)
    if imp is None:
        return None
    record.client.log_dict(record.parent_run_id, {"objective": imp.objective, "trials":
                         imp.trials, "fidelity": fidelity, "shares": imp.shares,
                         "caveat": imp.caveat}, IMPORTANCE_TABLE)
    record.client.log_text(record.parent_run_id, imp.table() + "\n", IMPORTANCE_TEXT)
    title = f"search {record.search_name} ({record.cfg.arch}), {imp.trials} {fidelity} trials"
    for name, make in zip(IMPORTANCE_PLOTS, (importance_figure, parallel_figure,
                                             landscape_figure), strict=True):
        fig = make(imp, title)
        record.client.log_figure(record.parent_run_id, fig, plot(name))
        plt.close(fig)
    return imp
