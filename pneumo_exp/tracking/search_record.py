"""What one search's runs tell, read from MLflow (`SearchRecord`), the record every process
of a search shares, a distributed one included; the writing side is search_tracker.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.evaluation.noise import BEST, NEAR_BEST, NOISE_NOTE, Scored, difference
from pneumo_exp.settings import VALIDATION_FIGURES
from pneumo_exp.text import cell, describe, text_table
from pneumo_exp.tracking.names import (
    FIDELITY_PARAM,
    FULL,
    SCREEN,
    STATUS_CUT,
    TAG_CANDIDATE,
    TAG_FIDELITY,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_TRIAL,
    VAL_PREDICTIONS,
)
from pneumo_exp.tracking.queries import children
from pneumo_exp.tracking.runs import parent_config

log = logging.getLogger(__name__)

# The trials table's columns and their heads; the hyperparameters last: the longest.
HEADS = {"trial": "trial", "fidelity": "fidelity", "val_auc": "val AUC", "vs_best": "vs best",
         "val_sensitivity": "sens", "val_specificity": "spec", "epochs": "epochs",
         "seconds": "s", "status": "status", "changed": "hyperparameters that differ"}


def progress_kind(row: Mapping[str, Any]) -> str:
    """How the progress plot draws a trial (plots.PROGRESS_KINDS)."""
    if row["status"].startswith(STATUS_CUT):
        return "cut"
    if row["fidelity"] == SCREEN:
        return "screened"
    return "completed" if row["candidate"] or row["status"] in ("completed", "") else "stopped"


def trials_table(rows: Sequence[Mapping[str, Any]],
                 vs_best: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One flat record per trial: id, the hyperparameters that differ, figures, status, and
    (`vs_best`, by trial id) whether it is the best of its fidelity or within the noise of
    it."""
    params = [r.get("params", {}) for r in rows]
    names = dict.fromkeys(k for p in params for k in p if not k.startswith("tuner/"))
    varying = [n for n in names if len({str(p.get(n)) for p in params}) > 1]
    return [{**{k: row.get(k) for k in HEADS}, "vs_best": (vs_best or {}).get(row["trial"], ""),
             "changed": describe({n: p[n] for n in varying if n in p})}
            for row, p in zip(rows, params, strict=True)]


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text of `trials_table` (the fidelity column when some were screened)."""
    columns = [c for c in HEADS
               if c != "fidelity" or any(r.get("fidelity") == SCREEN for r in table)]
    digits = {"seconds": 0, "val_auc": 4}
    text = text_table([HEADS[k] for k in columns],
                      [[r.get(k) for k in columns] for r in table],
                      lambda column, value: cell(value, digits.get(columns[column], 3)))
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
            for r in rows if top is not None else ():
                if r["trial"] == best[0] or r["fidelity"] != fidelity or not r["finished"]:
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

    def best_figures(self, run_id: str) -> dict[str, float]:
        """The `best_val_*` figures a trial's run logged for its best checkpoint."""
        return {k: v for k, v in self.client.get_run(run_id).data.metrics.items()
                if k.startswith("best_val_")}

    def _trial_runs(self) -> list[Run]:
        """The latest run of each trial (a killed run's trial runs again), by trial id."""
        runs = children(self.client, self.experiment_id, self.parent_run_id,
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
                **{f"val_{k}": m.get(f"best_val_{k}") for k in VALIDATION_FIGURES},
                "epochs": int(m["epochs"]) if "epochs" in m else None,
                "seconds": (end - info.start_time) / 1000, "status": status,
                "ended_s": (end - search_start) / 1000, "finished": info.status == "FINISHED"}

    def objective_curves(self, fidelity: str = FULL) -> list[list[float]]:
        """The objective per epoch of every finished trial of a fidelity, for the median
        stopping rule."""
        histories = (self.client.get_metric_history(run.info.run_id, self.cfg.search.objective)
                     for run in self._trial_runs() if run.info.status == "FINISHED"
                     and run.data.tags.get(TAG_FIDELITY, FULL) == fidelity)
        return [[h.value for h in sorted(history, key=lambda h: h.step) if not math.isnan(h.value)]
                for history in histories]

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
        return next((r["run_id"] for r in (self.rows() if rows is None else rows)
                     if r["trial"] == trial_id and r["finished"]), None)
