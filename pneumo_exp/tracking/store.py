"""The MLflow store: where it is, one experiment per architecture set up for the MLflow UI,
and the code version every run records.

No TensorFlow here: `pneumo-exp ui`, `server` and the listings use it without loading it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import subprocess
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pneumo_exp import __version__
from pneumo_exp.config import REPO_ROOT, tracking_uri
from pneumo_exp.tracking.names import (
    FULL,
    SCREEN,
    TAG_CODE_VERSION,
    TAG_DATA,
    TAG_FIDELITY,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_STATUS,
)
from pneumo_exp.tracking.queries import quoted

# Every request retries while a tracking server or its database restarts (docs/cluster.md,
# "Restarts"); the environment overrides them.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def connect() -> MlflowClient:
    """Point MLflow at the configured store and return a client for it."""
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        init_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


@functools.cache
def init_sqlite_store(db: Path) -> None:
    """Create (or migrate) a SQLite store once, under a file lock: MLflow's schema migrations
    fail when two processes create the same store at once. WAL journaling then lets
    concurrent searches write side by side."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The experiment kind tag keeps the MLflow UI (3.17) out of its GenAI view; only a saved view
# (an experiment tag) carries the runs table's columns from the server: each experiment gets
# two (docs/searching.md, "The MLflow UI").
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's saved views
VIEWS = {FULL: ("pneumo-exp-trials", "pneumo-exp: full-fidelity trials, best first"),
         SCREEN: ("pneumo-exp-screened", "pneumo-exp: screened trials, best first")}
LEGACY_VIEW_TAG = f"{VIEW_TAG_PREFIX}pneumo-exp"  # the single shared view of before
COMMON_PARAMS = ("learning_rate", "optimizer", "dropout", "class_weight")
CLINICAL_METRICS = ("best_val_sensitivity", "best_val_specificity", "best_val_spec_at_sens",
                    "best_val_auc")


def runs_view(fidelity: str, key_params: Sequence[str], objective: str, created_ms: int) -> str:
    """A saved view of the runs table (the UI's envelope: name, times, state): the trials
    of one fidelity, best objective first, with the columns of docs/searching.md ("The
    MLflow UI")."""
    metrics = dict.fromkeys((*CLINICAL_METRICS, f"best_{objective}", "best_val_ece"))
    columns = [f"tags.`{TAG_FIDELITY}`", "metrics.`epochs`",
               *(f"metrics.`{m}`" for m in metrics), f"tags.`{TAG_STATUS}`",
               "attributes.`Duration`",
               *(f"params.`{p}`" for p in dict.fromkeys((*key_params, *COMMON_PARAMS)))]
    state = {"searchFilter": f"tags.`{TAG_FIDELITY}` = {quoted(fidelity)}",
             "orderByKey": f"metrics.`best_{objective}`", "orderByAsc": "loss" in objective,
             "selectedColumns": columns, "columnOrder": columns,
             "columnWidths": {c: 8 * len(c.split("`")[1]) + 40 for c in columns
                              if c.startswith(("metrics.", "tags."))}}  # names in full
    # listed newest first: the full-fidelity view on top
    created = created_ms + (1 if fidelity == FULL else 0)
    return json.dumps({"name": VIEWS[fidelity][1], "createdAt": created, "updatedAt": created,
                       "state": json.dumps(state)})


def ui_url(host: str, port: int, experiment: str, fidelity: str = FULL) -> str:
    """The experiment's runs table on its saved view of the trials of `fidelity`."""
    return (f"http://{host}:{port}/#/experiments/{experiment}/runs?workflowType="
            f"machine_learning&viewStateShareKey={VIEWS[fidelity][0]}")


def experiment_id(client: MlflowClient, name: str, key_params: Sequence[str] = (),
                  objective: str = "val_auc") -> str:
    """The experiment's id, created (or restored) if need be, set up for the MLflow UI: its
    saved views of the trials, with `key_params` (the architecture's main hyperparameters)
    as columns, sorted by `objective`."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # MlflowException: created meanwhile by a concurrent search
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.create_experiment(name)
        exp = client.get_experiment_by_name(name)
    elif exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    experiment, tags = exp.experiment_id, exp.tags
    views = {f"{VIEW_TAG_PREFIX}{key}": runs_view(fidelity, key_params, objective,
                                                  exp.creation_time or 0)
             for fidelity, (key, _) in VIEWS.items()}
    if LEGACY_VIEW_TAG in tags:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_experiment_tag(experiment, LEGACY_VIEW_TAG)
    for key, value in {**EXPERIMENT_KIND, **views}.items():
        if tags.get(key) != value:
            try:
                client.set_experiment_tag(experiment, key, value)
            except mlflow.exceptions.MlflowException:
                # a chief and its workers start at once: on PostgreSQL the second insert of
                # the same tag fails; what counts is that the tag is there
                if client.get_experiment(experiment).tags.get(key) is None:
                    raise
    return experiment


@functools.cache
def code_version() -> dict[str, str]:
    """Git commit of the code (and whether it had uncommitted changes), and the package's
    version."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return {TAG_CODE_VERSION: __version__}
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: str(dirty).lower(),
            TAG_CODE_VERSION: __version__}


def provenance(data_fingerprint: str | None) -> dict[str, str]:
    """The tags every run the product writes carries: the code version and the fingerprint
    of the data it read."""
    return {**code_version(), **({TAG_DATA: data_fingerprint} if data_fingerprint else {})}
