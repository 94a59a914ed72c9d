"""MLflow tracking: the store, one experiment per architecture, parent runs (a search, a
cross-validation) and their nested runs (trials, folds), and the data a run used.

No TensorFlow here: `pneumo-exp server` and the listings use it without loading it.
Hypermodels never import MLflow; the tuners call pneumo_exp.search_tracker at their hooks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.tracking import MlflowClient

from pneumo_exp import __version__
from pneumo_exp.config import REPO_ROOT, ExperimentConfig, tracking_uri
from pneumo_exp.data.labeled import LabeledImages

log = logging.getLogger(__name__)

TAG_ROLE = "pneumo.role"  # search, trial, cv, fold or evaluation
TAG_SEARCH = "pneumo.search"
TAG_TRIAL = "pneumo.trial_id"
TAG_TUNER = "pneumo.tuner_id"  # which Keras Tuner process ran a trial (distributed search)
TAG_ARCH = "pneumo.arch"
TAG_DATA = "pneumo.data_fingerprint"
TAG_STATUS = "pneumo.trial_status"  # how a trial ended: completed, early stopped, ...


def connect() -> MlflowClient:
    """Point MLflow at the configured store and return a client for it."""
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
KEY_PARAMS = {"baseline": ("units_1", "units_2"), "regularized": ("l2", "units_1"),
              "cnn": ("conv_blocks", "batch_norm", "head", "intensity"),
              "aug_cnn": ("conv_blocks", "batch_norm", "head", "intensity"),
              "transfer": ("base", "pooling", "fine_tune_layers")}


def runs_view(arch: str | None) -> str:
    """The runs table of the shared view: the best checkpoint's validation figures, how
    each trial ended, and the main hyperparameters, best validation AUC first."""
    metrics = ("best_val_auc", "best_val_sensitivity", "best_val_specificity", "epochs",
               "wall_time_s")
    params = (*KEY_PARAMS.get(arch or "", ()), "learning_rate", "optimizer", "dropout",
              "class_weight")
    columns = ["attributes.`Duration`", *(f"metrics.`{m}`" for m in metrics),
               f"tags.`{TAG_STATUS}`", *(f"params.`{p}`" for p in params)]
    return json.dumps({"orderByKey": "metrics.`best_val_auc`", "orderByAsc": False,
                       "selectedColumns": columns})


def ui_url(host: str, port: int, experiment: str) -> str:
    return (f"http://{host}:{port}/#/experiments/{experiment}/runs?workflowType="
            f"machine_learning&viewStateShareKey={VIEW_KEY}")


def experiment_id(client: MlflowClient, name: str, arch: str | None = None) -> str:
    """The experiment's id, created (or restored) if need be, set up for the MLflow UI."""
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
    for key, value in {**EXPERIMENT_KIND, VIEW_TAG: runs_view(arch)}.items():
        if tags.get(key) != value:
            try:
                client.set_experiment_tag(experiment, key, value)
            except mlflow.exceptions.MlflowException:
                # a chief and its workers start at once: on PostgreSQL the second insert of
                # the same tag fails; what counts is that the tag is there
                if client.get_experiment(experiment).tags.get(key) is None:
                    raise
    return experiment


def code_version() -> dict[str, str]:
    """Git commit of the code (and whether it had uncommitted changes), for the run's tags."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return {"pneumo.version": __version__}
    return {"mlflow.source.git.commit": commit, "pneumo.git_dirty": str(dirty).lower(),
            "pneumo.version": __version__}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def create_parent_run(client: MlflowClient, experiment: str, cfg: ExperimentConfig,
                      run_name: str, tags: Mapping[str, str],
                      extra_params: Mapping[str, Any]) -> str:
    """A parent run (search or cv) carrying the configuration as params and config.yaml."""
    run = client.create_run(experiment, run_name=run_name,
                            tags={TAG_ARCH: cfg.arch, **tags, **code_version()})
    params = flatten({k: v for k, v in cfg.to_dict().items() if k != "space"})
    params = {k: v for k, v in params.items()
              if k not in ("search.max_trials", "search.time_budget_min")}
    params.update({f"space.{k}": json.dumps(v) for k, v in cfg.space.items()})
    params.update(extra_params)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000])
                                              for k, v in params.items()])
    client.log_text(run.info.run_id, yaml.safe_dump(cfg.to_dict()), "config.yaml")
    return run.info.run_id


def log_data_description(client: MlflowClient, run_id: str, root: Path,
                         parts: Mapping[str, LabeledImages], skipped: Sequence[tuple[str, str]],
                         fingerprint: str) -> None:
    """On a search or cv run: source, sizes, class counts, skipped files, the fingerprint,
    and the parts as MLflow datasets (with content digests)."""
    params: dict[str, Any] = {"data.source": str(root), "data.skipped_files": len(skipped)}
    for split, part in parts.items():
        params[f"data.{split}_size"] = len(part)
        for cls, count in part.class_counts().items():
            params[f"data.{split}_{cls}"] = count
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v))
                                     for k, v in params.items()])
    client.set_tag(run_id, TAG_DATA, fingerprint)
    client.log_text(run_id, "".join(f"{n}\t{r}\n" for n, r in skipped) or "none\n",
                    "data/skipped_files.tsv")
    inputs = []
    for split, part in parts.items():
        with warnings.catch_warnings():  # a local path is a local source; MLflow asks twice
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_numpy(part.images, targets=part.labels, source=str(root),
                                        name=f"{root.name}-{split}")
        inputs.append(DatasetInput(ds._to_mlflow_entity(),
                                   [InputTag("mlflow.data.context", split)]))
    client.log_inputs(run_id, datasets=inputs)


def log_summary(client: MlflowClient, run_id: str, metrics: Mapping[str, float]) -> None:
    """Summary metrics of a parent run. Searches and cvs share the names (best_val_auc,
    best_val_accuracy, best_val_loss, n_trials, wall_time_s) so the UI compares them."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


@contextlib.contextmanager
def child_run(experiment: str, parent_run_id: str, run_name: str, tags: Mapping[str, str],
              params: Mapping[str, Any]) -> Iterator[str]:
    """The active nested run of a trial or a fold: FAILED if its block raises, KILLED on
    Ctrl-C, FINISHED otherwise."""
    run = mlflow.start_run(experiment_id=experiment, run_name=run_name,
                           parent_run_id=parent_run_id, tags=dict(tags))
    try:
        mlflow.log_params(dict(params))
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("pneumo.failure", f"{type(e).__name__}: {e}"[:4000])
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
