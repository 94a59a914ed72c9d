"""MLflow tracking: the store, one experiment per architecture, parent runs (a search, a
cross-validation) and their nested runs (trials, folds), and the MLflow side of a search.

The tuners call this at their hooks; hypermodels never import MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp import __version__
from pneumo_exp.config import REPO_ROOT, ExperimentConfig, tracking_uri
from pneumo_exp.data.dataset import TrainingData
from pneumo_exp.errors import UserError
from pneumo_exp.fileio import write_text_atomic
from pneumo_exp.records import log_data_description

log = logging.getLogger(__name__)

TAG_ROLE = "pneumo.role"  # search, trial, cv, fold or evaluation
TAG_SEARCH = "pneumo.search"
TAG_TRIAL = "pneumo.trial_id"
TAG_TUNER = "pneumo.tuner_id"  # which Keras Tuner process ran a trial (distributed search)
TAG_ARCH = "pneumo.arch"


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


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent search
        return client.get_experiment_by_name(name).experiment_id


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


class SearchTracker:
    """The MLflow side of one search, identified by its architecture and search name."""

    def __init__(self, cfg: ExperimentConfig, search_name: str, project_dir: Path) -> None:
        self.cfg = cfg
        self.search_name = search_name
        self.client = connect()
        self.experiment_id = experiment_id(self.client, cfg.experiment_name)
        self._run_file = project_dir / "mlflow_parent_run.json"
        self.parent_run_id: str | None = None
        self.resumed = False
        self._started = time.time()
        self.trials_this_session = 0

    # ---- parent run -------------------------------------------------------------------
    def begin(self, data: TrainingData, tuner_settings: Mapping[str, Any]) -> str:
        """Reopen the search's parent run if it exists (resume), else create it."""
        previous = self._previous_parent()
        if previous:
            self.parent_run_id, self.resumed = previous, True
            self.client.update_run(previous, status="RUNNING")
            self._close_stale_trial_runs()
        else:
            self.parent_run_id = create_parent_run(
                self.client, self.experiment_id, self.cfg, f"search-{self.search_name}",
                {TAG_ROLE: "search", TAG_SEARCH: self.search_name},
                {f"tuner.{k}": v for k, v in tuner_settings.items()})
            write_text_atomic(self._run_file, json.dumps({"run_id": self.parent_run_id}))
            log_data_description(self.client, self.parent_run_id, data.root,
                                 {"train": data.train, "val": data.val}, data.skipped,
                                 data.fingerprint)
        # Budgets may grow when a search is extended, so they are tags, not params.
        self.client.set_tag(self.parent_run_id, "search.max_trials", self.cfg.search.max_trials)
        self.client.set_tag(self.parent_run_id, "search.time_budget_min",
                            self.cfg.search.time_budget_min)
        return self.parent_run_id

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

    def attach(self, tuner_id: str, timeout: float = 600) -> str:
        """A worker of a distributed search: find the parent run its chief opened (by the
        search's name), and close the runs a previous life of this worker left RUNNING."""
        deadline = time.time() + timeout
        while True:
            runs = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{TAG_ROLE}` = 'search' and tags.`{TAG_SEARCH}` = '{self.search_name}' "
                "and attributes.status = 'RUNNING'",
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

    def end(self, best: Mapping[str, Any] | None, counts: Mapping[str, int],
            status: str = "FINISHED") -> None:
        """Summary metrics for comparing searches side by side, then close the parent run."""
        assert self.parent_run_id
        if self.trials_this_session or not self.resumed:
            metrics = {f"n_{k}": float(v) for k, v in counts.items()}
            metrics["wall_time_s"] = self._previous_wall_time() + time.time() - self._started
            if best:
                metrics.update({k: float(v) for k, v in best["metrics"].items()})
                self.client.set_tag(self.parent_run_id, "best_trial_id", best["trial_id"])
                if best.get("run_id"):
                    self.client.set_tag(self.parent_run_id, "best_run_id", best["run_id"])
            log_summary(self.client, self.parent_run_id, metrics)
        self.client.set_terminated(self.parent_run_id, status=status)

    def _previous_wall_time(self) -> float:
        if not self.resumed:
            return 0.0
        return float(self.client.get_run(self.parent_run_id).data.metrics.get("wall_time_s", 0))

    # ---- trial runs -------------------------------------------------------------------
    def trial_run(self, trial_id: str, hyperparameters: Mapping[str, Any],
                  tuner_id: str) -> contextlib.AbstractContextManager[str]:
        """The nested run of one trial, with every hyperparameter as a param."""
        self.trials_this_session += 1
        assert self.parent_run_id
        return child_run(self.experiment_id, self.parent_run_id, f"trial-{trial_id}",
                         {TAG_ROLE: "trial", TAG_SEARCH: self.search_name, TAG_TRIAL: trial_id,
                          TAG_ARCH: self.cfg.arch, TAG_TUNER: tuner_id}, hyperparameters)

    def trial_run_id(self, trial_id: str) -> str | None:
        """The finished run of a trial of this search."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and "
            f"tags.`{TAG_TRIAL}` = '{trial_id}' and attributes.status = 'FINISHED'",
            max_results=1)
        return runs[0].info.run_id if runs else None
