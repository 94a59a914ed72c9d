"""The MLflow side of one search: its parent run (created, or reopened to resume), a nested
run per trial, and what the runs tell about the search so far (each trial's row, the
objective's curves for the median rule, the best trial, an estimate of the time left).

MLflow is the record every process of a search shares, a distributed one included, so the
console, the summary table and the parent's `best_run_id` are all read from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from pneumo_exp.config import VALIDATION_FIGURES, ExperimentConfig
from pneumo_exp.data.dataset import TrainingData
from pneumo_exp.errors import UserError
from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.noise import Scored, difference
from pneumo_exp.fileio import write_text_atomic
from pneumo_exp.text import describe, text_table
from pneumo_exp.tracking.importance import (
    Importance,
    estimate,
    importance_figure,
    landscape_figure,
    parallel_figure,
)
from pneumo_exp.tracking.machine import MACHINE_PREFIX, cpu_kind, machine_record
from pneumo_exp.tracking.names import (
    FIDELITY_PARAM,
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
    VAL_PREDICTIONS,
    plot,
)
from pneumo_exp.tracking.runs import (
    child_run,
    create_parent_run,
    log_data_description,
    log_summary,
    log_table,
    parent_config,
)
from pneumo_exp.tracking.store import connect, experiment_id

log = logging.getLogger(__name__)

ROW_FIGURES = tuple(f"val_{f}" for f in VALIDATION_FIGURES)
COLUMNS = ("trial", "fidelity", "val_auc", "vs_best", "val_sensitivity", "val_specificity",
           "epochs", "seconds", "status", "changed")  # the hyperparameters last: the longest
HEADS = {"trial": "trial", "fidelity": "fidelity", "changed": "hyperparameters that differ",
         "val_auc": "val AUC", "vs_best": "vs best", "val_sensitivity": "sens",
         "val_specificity": "spec", "epochs": "epochs", "seconds": "s", "status": "status"}
BEST, NEAR_BEST = "best", "≈ best"  # the vs_best column: the best of its fidelity, or within
# the validation noise of it (evaluation.noise: a paired bootstrap of the objective)
NOISE_NOTE = (f"{NEAR_BEST}: within the validation noise of the best trial of its fidelity "
              "(a paired bootstrap of the objective over the validation images, 95%): the "
              "data cannot rank them.")


def progress_kind(row: Mapping[str, Any]) -> str:
    """How the progress plot draws a trial (plots.PROGRESS_KINDS)."""
    if row["status"].startswith(STATUS_CUT):
        return "cut"
    if row["fidelity"] == SCREEN:
        return "screened"
    return "completed" if row["candidate"] or row["status"] in ("completed", "") else "stopped"


def changed_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyperparameters whose values differ between the trials."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row.get("params", {}) if k not in names and not k.startswith("tuner/")]
    return [n for n in names
            if len({str(r.get("params", {}).get(n)) for r in rows}) > 1]


def trials_table(rows: Sequence[Mapping[str, Any]],
                 vs_best: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One flat record per trial: id, the hyperparameters that differ, figures, status, and
    (`vs_best`, by trial id) whether it is the best of its fidelity or within the noise of
    it."""
    varying = changed_columns(rows)
    table = []
    for row in rows:
        params = row.get("params", {})
        record = {k: row.get(k) for k in COLUMNS}
        record["vs_best"] = (vs_best or {}).get(row["trial"], "")
        record["changed"] = describe({n: params[n] for n in varying if n in params})
        table.append(record)
    return table


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text of `trials_table` (the fidelity column when some were screened)."""
    columns = [c for c in COLUMNS
               if c != "fidelity" or any(r.get("fidelity") == SCREEN for r in table)]

    def fmt(column: int, value: Any) -> str:
        key = columns[column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if key == "seconds":
            return f"{value:.0f}"
        if isinstance(value, float):
            return f"{value:.4f}" if key == "val_auc" else f"{value:.3f}"
        return str(value)

    text = text_table([HEADS[k] for k in columns],
                      [[r.get(k) for k in columns] for r in table], fmt)
    if any(r.get("vs_best") == NEAR_BEST for r in table):
        text += "\n" + NOISE_NOTE
    return text


class SearchRecord:
    """What one search's runs tell: a row per trial, the objective's curves, the best
    trial, the time left, the trials table and the importance of its hyperparameters. Read
    from MLflow, so it is the same for every process of a search, and for any search of
    the store afterwards (`from_parent`)."""

    def __init__(self, client: MlflowClient, cfg: ExperimentConfig, search_name: str,
                 experiment: str, parent_run_id: str | None = None) -> None:
        self.client, self.cfg, self.search_name = client, cfg, search_name
        self.experiment_id, self.parent_run_id = experiment, parent_run_id

    @classmethod
    def from_parent(cls, client: MlflowClient, parent: Run) -> SearchRecord:
        """The record of a search's parent run, its configuration from its config.yaml."""
        return cls(client, parent_config(parent),
                   parent.data.tags.get(TAG_SEARCH, parent.info.run_name),
                   parent.info.experiment_id, parent.info.run_id)

    def validation_predictions(self, run_id: str) -> Scored | None:
        """A trial's best checkpoint on its validation images (None for a trial logged
        before they were kept)."""
        try:
            d = mlflow.artifacts.load_dict(
                f"{self.client.get_run(run_id).info.artifact_uri}/{VAL_PREDICTIONS}")
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return Scored(np.asarray(d["labels"]), np.asarray(d["probabilities"]))

    def vs_best(self, rows: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
        """By trial id: the best finished trial of each fidelity, and the trials whose
        objective lies within the validation noise of it."""
        rows = self.rows() if rows is None else rows
        name, s = self.cfg.search.objective, self.cfg.search
        out: dict[str, str] = {}
        for fidelity in (SCREEN, FULL):
            best = self.best_so_far(fidelity, rows)
            if best is None:
                continue
            out[best[0]] = BEST
            top = self.validation_predictions(self.trial_run_id(best[0], rows) or "")
            for r in rows:
                if (r["trial"] == best[0] or r["fidelity"] != fidelity or not r["finished"]
                        or top is None):
                    continue
                other = self.validation_predictions(r["run_id"])
                if other is not None and np.array_equal(other.labels, top.labels) and \
                        difference(name, top, other, paired=True,
                                   sensitivity_target=s.sensitivity_target).within_noise:
                    out[r["trial"]] = NEAR_BEST
        return out

    def table(self) -> list[dict[str, Any]]:
        """The trials table with the noise column (`trials_table`)."""
        rows = self.rows()
        return trials_table(rows, self.vs_best(rows))

    def _log_trials(self) -> None:
        """The trials table (an MLflow table) and their objective against time (a plot)."""
        rows = self.rows()
        if not rows:
            return
        table = trials_table(rows, self.vs_best(rows))
        with contextlib.suppress(ImportError):
            import pandas as pd
            log_table(self.client, self.parent_run_id, pd.DataFrame(table), TRIALS_TABLE)
        self.client.log_text(self.parent_run_id, format_table(table) + "\n", TRIALS_TEXT)
        name = self.cfg.search.objective
        fig = plots.search_progress_figure(
            [(r["trial"], r["ended_s"], r.get(name), progress_kind(r)) for r in rows
             if r.get(name) is not None or r["status"].startswith(STATUS_CUT)],
            name, self.cfg.search.direction, f"search {self.search_name} ({self.cfg.arch})")
        self.client.log_figure(self.parent_run_id, fig, SEARCH_PROGRESS_PLOT)
        plots.close(fig)

    def log_importance(self) -> Importance | None:
        """Hyperparameter importance over the finished trials of the fidelity with the
        most of them, its plots and the landscape, on the parent run."""
        rows = [r for r in self.rows() if r["finished"]]
        fidelity = max((SCREEN, FULL), key=lambda f: sum(r["fidelity"] == f for r in rows))
        imp = estimate([r for r in rows if r["fidelity"] == fidelity],
                       self.cfg.search.objective, self.cfg.search.direction, fidelity)
        if imp is None:
            return None
        self.client.log_dict(self.parent_run_id, {"objective": imp.objective, "trials":
                             imp.trials, "fidelity": fidelity, "shares": imp.shares,
                             "caveat": imp.caveat}, IMPORTANCE_TABLE)
        self.client.log_text(self.parent_run_id, imp.table() + "\n", IMPORTANCE_TEXT)
        title = f"search {self.search_name} ({self.cfg.arch}), {imp.trials} {fidelity} trials"
        for name, make in zip(IMPORTANCE_PLOTS, (importance_figure, parallel_figure,
                                                 landscape_figure), strict=True):
            fig = make(imp, title)
            self.client.log_figure(self.parent_run_id, fig, plot(name))
            plots.close(fig)
        return imp

    def best_figures(self, run_id: str) -> dict[str, float]:
        """The `best_val_*` figures a trial's run logged for its best checkpoint."""
        return {k: v for k, v in self.client.get_run(run_id).data.metrics.items()
                if k.startswith("best_val_")}

    def _trial_runs(self) -> list[Run]:
        """The latest run of each trial (a killed run's trial runs again), by trial id."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'",
            order_by=["attributes.start_time ASC"])
        latest = {r.data.tags.get(TAG_TRIAL, ""): r for r in runs}
        return [latest[k] for k in sorted(latest, key=lambda t: int(t) if t.isdigit() else -1)]

    def rows(self) -> list[dict[str, Any]]:
        """One row per trial: id, hyperparameters, the best checkpoint's figures, epochs,
        seconds, how it ended, and when it ended (seconds into the search)."""
        start = self.client.get_run(self.parent_run_id).info.start_time
        return [self._row(run, start) for run in self._trial_runs()]

    def _row(self, run: Run, search_start: int) -> dict[str, Any]:
        m, info = run.data.metrics, run.info
        status = run.data.tags.get(TAG_STATUS) or {"FAILED": "failed", "KILLED": "killed",
                                                    "RUNNING": "running"}.get(info.status, "")
        end = info.end_time or int(time.time() * 1000)
        return {"trial": run.data.tags.get(TAG_TRIAL, "?"), "run_id": info.run_id,
                "fidelity": run.data.tags.get(TAG_FIDELITY, FULL),
                "candidate": run.data.tags.get(TAG_CANDIDATE) == "true",
                "params": {k: v for k, v in run.data.params.items()
                           if not k.startswith(FIDELITY_PARAM)},
                **{k: m.get(f"best_{k}") for k in ROW_FIGURES},
                "epochs": int(m["epochs"]) if "epochs" in m else None,
                "seconds": (end - info.start_time) / 1000, "status": status,
                "ended_s": (end - search_start) / 1000, "finished": info.status == "FINISHED"}

    def trial_row(self, trial_id: str) -> dict[str, Any] | None:
        start = self.client.get_run(self.parent_run_id).info.start_time
        runs = [r for r in self._trial_runs() if r.data.tags.get(TAG_TRIAL) == trial_id]
        return self._row(runs[0], start) if runs else None

    def objective_curves(self, fidelity: str = FULL) -> list[list[float]]:
        """The objective per epoch of every finished trial of a fidelity, for the median
        stopping rule."""
        name = self.cfg.search.objective
        curves = []
        for run in self._trial_runs():
            if run.info.status == "FINISHED" and run.data.tags.get(TAG_FIDELITY,
                                                                   FULL) == fidelity:
                history = self.client.get_metric_history(run.info.run_id, name)
                values = [h.value for h in sorted(history, key=lambda h: h.step)]
                curves.append([v for v in values if not math.isnan(v)])
        return curves

    def best_so_far(self, fidelity: str = FULL, rows: Sequence[Mapping[str, Any]] | None = None
                    ) -> tuple[str, float] | None:
        """(trial id, objective) of the best finished trial of a fidelity."""
        name, sign = self.cfg.search.objective, (1 if self.cfg.search.direction == "max"
                                                 else -1)
        scored = [(r["trial"], r[name]) for r in (self.rows() if rows is None else rows)
                  if r["finished"] and r["fidelity"] == fidelity and r.get(name) is not None
                  and not math.isnan(r[name])]
        return max(scored, key=lambda t: sign * t[1]) if scored else None

    def remaining_estimate(self, deadline: float | None) -> float | None:
        """Seconds the rest of the search should take, about: each trial left at the mean
        time of the trials of its fidelity so far (a full-fidelity trial not yet timed
        costs a screened one's times its more data and epochs; not its larger images, which
        at these sizes cost little more per step), no more than the time budget leaves."""
        s, rows = self.cfg.search, self.rows()
        done = [r for r in rows if r["status"] != "running"]
        if not done:
            return None
        mean = {f: sum(r["seconds"] for r in done if r["fidelity"] == f)
                / max(1, sum(r["fidelity"] == f for r in done)) for f in (SCREEN, FULL)}
        screened, trained = s.split
        if not any(r["fidelity"] == FULL for r in done) and screened:
            mean[FULL] = (mean[SCREEN] / s.screen_fraction * self.cfg.train.epochs
                          / min(s.screen_epochs, self.cfg.train.epochs))
        left = {SCREEN: screened - sum(r["fidelity"] == SCREEN for r in rows),
                FULL: trained - sum(r["fidelity"] == FULL for r in rows)}
        estimate = sum(max(0, left[f]) * mean[f] for f in left)
        if deadline:
            estimate = min(estimate, max(0.0, deadline - time.time()))
        return estimate

    def trial_run_id(self, trial_id: str, rows: Sequence[Mapping[str, Any]] | None = None
                     ) -> str | None:
        """The finished run of a trial of this search."""
        for row in (self.rows() if rows is None else rows):
            if row["trial"] == trial_id and row["finished"]:
                return row["run_id"]
        return None


class SearchTracker(SearchRecord):
    """The MLflow side of one search, identified by its architecture and search name."""

    def __init__(self, cfg: ExperimentConfig, search_name: str, project_dir: Path,
                 key_params: Sequence[str] = ()) -> None:
        client = connect()
        super().__init__(client, cfg, search_name,
                         experiment_id(client, cfg.experiment_name, key_params,
                                       cfg.search.objective))
        self._run_file = project_dir / "mlflow_parent_run.json"
        self.resumed = False
        self._started = time.time()
        self._previous_wall_time = 0.0
        self.trials_this_session = 0
        self.data_fingerprint: str | None = None  # of the data this process trains on

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
                ROLE_SEARCH, data.fingerprint, {TAG_SEARCH: self.search_name},
                {f"tuner.{k}": v for k, v in tuner_settings.items()})
            write_text_atomic(self._run_file, json.dumps({"run_id": self.parent_run_id}))
            log_data_description(self.client, self.parent_run_id, data.root,
                                 {"train": data.train, "val": data.val}, data.skipped)
        self.data_fingerprint = data.fingerprint
        self._record_machine()
        # Budgets may grow when a search is extended, so they are tags, not params.
        self.client.set_tag(self.parent_run_id, TAG_MAX_TRIALS, self.cfg.search.planned_trials)
        self.client.set_tag(self.parent_run_id, TAG_SPLIT,
                            "{} screened + {} full".format(*self.cfg.search.split))
        self.client.set_tag(self.parent_run_id, TAG_TIME_BUDGET, self.cfg.search.time_budget_min)
        return self.parent_run_id

    def _record_machine(self) -> None:
        """The machine record on the parent run; a search resumed on another kind of CPU
        says that its trials from now on are not those the first machine would give."""
        record = machine_record(self.cfg.train.threads)
        before = self.client.get_run(self.parent_run_id).data.tags
        kind = f"{MACHINE_PREFIX}isa"
        if self.resumed and before.get(kind) and (
                before[kind], before.get(f"{MACHINE_PREFIX}cpu")) != (
                record[kind], record[f"{MACHINE_PREFIX}cpu"]):
            log.warning("search '%s' began on another kind of CPU (%s; %s) than this one "
                        "(%s; %s): TensorFlow's kernels differ, so the trials run from here "
                        "on give other figures than they would have there.", self.search_name,
                        before.get(f"{MACHINE_PREFIX}cpu"), before[kind],
                        record[f"{MACHINE_PREFIX}cpu"], record[kind])
        for key, value in record.items():
            self.client.set_tag(self.parent_run_id, key, value)

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
                f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}' and "
                f"tags.`{TAG_SEARCH}` = '{self.search_name}' and attributes.status = 'RUNNING'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                self.parent_run_id = runs[0].info.run_id
                break
            if time.time() > deadline:
                raise UserError(
                    f"no running search '{self.search_name}' in MLflow experiment "
                    f"'{self.cfg.experiment_name}' at {mlflow.get_tracking_uri()}: start the "
                    "chief first, with the same configuration (or --name) and tracking URI.")
            time.sleep(2)
        self._close_stale_trial_runs(f" and tags.`{TAG_TUNER}` = '{tuner_id}'")
        return self.parent_run_id

    def _close_stale_trial_runs(self, extra_filter: str = "") -> None:
        """Trial runs left RUNNING by a killed process end as KILLED."""
        for run in self.client.search_runs(
                [self.experiment_id],
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' "
                f"and attributes.status = 'RUNNING'{extra_filter}"):
            self.client.set_terminated(run.info.run_id, status="KILLED")
            log.info("trial run %s (trial %s) was left running by an interrupted search; "
                     "marked KILLED.", run.info.run_id, run.data.tags.get(TAG_TRIAL))

    def end(self, best: tuple[str, str] | None, counts: Mapping[str, int],
            status: str = "FINISHED") -> None:
        """Summary metrics and the trials table for comparing searches, then close the
        parent run. `best` is (trial id, run id) of the best trial."""
        assert self.parent_run_id
        for tag, key in ((TAG_TRIALS_PLANNED, "planned_trials"),
                         (TAG_TRIALS_COMPLETED, "completed_trials"), (TAG_TRIALS_CUT,
                                                                      "cut_trials")):
            if key in counts:
                self.client.set_tag(self.parent_run_id, tag, counts[key])
        if self.trials_this_session or not self.resumed:
            metrics = {f"n_{k}": float(v) for k, v in counts.items()}
            metrics["wall_time_s"] = self.elapsed()
            if best:
                trial_id, run_id = best
                metrics.update(self.best_figures(run_id))
                self.client.set_tag(self.parent_run_id, TAG_BEST_TRIAL, trial_id)
                self.client.set_tag(self.parent_run_id, TAG_BEST_RUN, run_id)
            log_summary(self.client, self.parent_run_id, metrics)
            self._log_trials()
            self.log_importance()
        self.client.set_terminated(self.parent_run_id, status=status)




    def elapsed(self) -> float:
        """Seconds this search has run, over all its sessions."""
        return self._previous_wall_time + time.time() - self._started

    # ---- trial runs -------------------------------------------------------------------
    def trial_run(self, trial_id: str, hyperparameters: Mapping[str, Any], tuner_id: str,
                  fidelity: str = FULL, fidelity_params: Mapping[str, Any] | None = None
                  ) -> contextlib.AbstractContextManager[str]:
        """The nested run of one trial, with every hyperparameter and its fidelity (image
        size, part of train, epochs) as params."""
        self.trials_this_session += 1
        assert self.parent_run_id
        return child_run(self.experiment_id, self.parent_run_id, f"trial-{trial_id}",
                         ROLE_TRIAL, self.data_fingerprint,
                         {TAG_SEARCH: self.search_name, TAG_TRIAL: trial_id,
                          TAG_ARCH: self.cfg.arch, TAG_TUNER: tuner_id, TAG_FIDELITY: fidelity,
                          TAG_MACHINE: cpu_kind()},
                         {**hyperparameters, **(fidelity_params or {})})

    def set_trial_status(self, run_id: str, status: str, candidate: bool = False) -> None:
        """How a trial ended, and whether promote may package it."""
        self.client.set_tag(run_id, TAG_STATUS, status[:500])
        self.client.set_tag(run_id, TAG_CANDIDATE, str(candidate).lower())

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
        self.client.set_tag(run_id, TAG_CHECKPOINT, "none: a screened trial")
        self.client.set_tag(run_id, MLFLOW_RUN_NOTE, note)








