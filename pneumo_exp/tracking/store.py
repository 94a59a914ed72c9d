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
    TAG_CODE_VERSION,
    TAG_DATA,
    TAG_FIDELITY,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_STATUS,
)

# A tracking server or its database may restart under a running search: every request
# retries (on a refused connection and on 429/5xx) after 1, 2, 4, ... s, up to 120 s apart,
# 8 times: about 4 minutes in all before a client gives up. The environment overrides them.
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


_ready_stores: set[Path] = set()


def init_sqlite_store(db: Path) -> None:
    """Create (or migrate) a SQLite store once, under a file lock: MLflow's schema migrations
    fail when two processes create the same store at once. WAL journaling then lets
    concurrent searches write side by side."""
    if db in _ready_stores:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _ready_stores.add(db)


# The MLflow UI (3.17) opens in its GenAI view unless told otherwise: the experiment kind
# tag says these are model-training experiments (MLflow's own demos set it), and the link
# of `ui_url` opens the model-training view's runs table on a shared view state (the UI's
# "Share" feature, an experiment tag) with the trials' key columns, best first.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
VIEW_KEY = "pneumo-exp"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
COMMON_PARAMS = ("learning_rate", "optimizer", "dropout", "class_weight")


def runs_view(key_params: Sequence[str] = ()) -> str:
    """The runs table of the shared view: the best checkpoint's validation figures, the
    fidelity it was judged at, how each trial ended, and the main hyperparameters (the
    architecture's own, then the common ones), best validation AUC first."""
    metrics = ("best_val_auc", "best_val_sensitivity", "best_val_specificity", "epochs",
               "wall_time_s")
    params = (*key_params, *COMMON_PARAMS)
    columns = ["attributes.`Duration`", *(f"metrics.`{m}`" for m in metrics),
               f"tags.`{TAG_FIDELITY}`", f"tags.`{TAG_STATUS}`",
               *(f"params.`{p}`" for p in params)]
    return json.dumps({"orderByKey": "metrics.`best_val_auc`", "orderByAsc": False,
                       "selectedColumns": columns})


def ui_url(host: str, port: int, experiment: str) -> str:
    return (f"http://{host}:{port}/#/experiments/{experiment}/runs?workflowType="
            f"machine_learning&viewStateShareKey={VIEW_KEY}")


def experiment_id(client: MlflowClient, name: str, key_params: Sequence[str] = ()) -> str:
    """The experiment's id, created (or restored) if need be, set up for the MLflow UI with
    `key_params` (the architecture's main hyperparameters) as columns."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        experiment = exp.experiment_id
    else:
        try:
            experiment = client.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent search
            experiment = client.get_experiment_by_name(name).experiment_id
    tags = exp.tags if exp is not None else {}
    for key, value in {**EXPERIMENT_KIND, VIEW_TAG: runs_view(key_params)}.items():
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
    tags = dict(code_version())
    if data_fingerprint:
        tags[TAG_DATA] = data_fingerprint
    return tags
