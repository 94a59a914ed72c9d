"""Distributed search on 127.0.0.1: a real MLflow tracking server, Keras Tuner's chief and
two workers (pneumo-exp search --workers 2), a worker killed mid-trial, and promotion
against the server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pneumo_exp.errors import ConfigError
from pneumo_exp.search.distributed import free_port, role_from_args

pytestmark = pytest.mark.slow  # real processes and servers

CLI = [sys.executable, "-m", "pneumo_exp.cli"]
SINGLE = ["search", "aug_cnn", "--max-trials", "3", "--epochs", "1", "--image-size", "32",
          "--tuner", "random", "--set", "space.conv_blocks=2"]
SEARCH = ["search", "aug_cnn", "--workers", "2", "--max-trials", "4", "--epochs", "1",
          "--image-size", "32", "--tuner", "random", "--set", "space.conv_blocks=2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`pneumo-exp server` (mlflow server) on a free 127.0.0.1 port, its runs and registry in
    a PostgreSQL database, its artifacts served by the server; one server process, as 2
    cores start 4 slowly. Skipped, saying why, where PostgreSQL cannot be started."""
    from postgres import Unavailable, postgres_uri

    root = tmp_path_factory.mktemp("server")
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(postgres_uri())
        except Unavailable as e:
            pytest.skip(f"PostgreSQL could not be started: {e}")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        proc = subprocess.Popen([*CLI, "server", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", backend, "--artifacts-destination",
                                 str(root / "artifacts")], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stack.callback(proc.wait, timeout=60)
        stack.callback(proc.terminate)
        uri = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, f"the MLflow server exited: {proc.stderr.read()}"
                time.sleep(0.5)
        yield {"uri": uri, "root": root, "backend": backend,
               "env": {**env, "MLFLOW_TRACKING_URI": uri}}


def _search_runs(client: MlflowClient, name: str | None = None) -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name("pneumo-exp/aug_cnn")
    query = "tags.`pneumo.role` = 'search'"
    parents = client.search_runs([exp.experiment_id], query, order_by=[
        "attributes.start_time DESC"])
    parent = next(p for p in parents if name is None or p.data.tags["pneumo.search"] == name)
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


def test_chief_and_two_workers_log_under_one_parent(server: dict[str, Any],
                                                    tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, *SEARCH, "--name", "first"], cwd=tmp_path, env=server["env"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = _search_runs(MlflowClient(server["uri"]), "first")
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_completed_trials"] == 4
    assert sorted(r.data.tags["pneumo.trial_id"] for r in children) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["pneumo.tuner_id"] for r in children} <= {"worker0", "worker1"}
    assert parent.data.tags["best_run_id"] in {r.info.run_id for r in children}


def _worker_pid(worker_id: str) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-id" in cmdline and worker_id.encode() in cmdline and b"second" in cmdline:
            return int(proc.name)
    return None


def test_a_worker_killed_mid_trial_does_not_stop_the_search(server: dict[str, Any],
                                                            tmp_path: Path) -> None:
    client = MlflowClient(server["uri"])
    launcher = subprocess.Popen([*CLI, *SEARCH, "--name", "second"], cwd=tmp_path,
                                env=server["env"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    killed = False
    deadline = time.time() + 600
    while not killed and time.time() < deadline and launcher.poll() is None:
        try:
            _, children = _search_runs(client, "second")
        except (StopIteration, AttributeError):
            children = []
        running = [r for r in children if r.info.status == "RUNNING"
                   and r.data.tags.get("pneumo.tuner_id") == "worker0"]
        pid = _worker_pid("worker0")
        if running and pid:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.3)
    assert killed, "worker0 never ran a trial"
    _, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, err[-3000:]
    parent, children = _search_runs(client, "second")
    assert parent.info.status == "FINISHED"
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["pneumo.trial_id"] for r in finished) == ["0", "1", "2", "3"]
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert [r.info.status for r in children if r not in finished] == ["KILLED"]


def _recorded_once(client: MlflowClient, name: str, trials: int) -> None:
    parent, children = _search_runs(client, name)
    assert parent.info.status == "FINISHED"
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["pneumo.trial_id"]) for r in finished) == list(range(trials))
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_two_searches_at_once_on_one_server(server: dict[str, Any], tmp_path: Path) -> None:
    """A distributed search and a single-process one write to the same server at once."""
    searches = {
        "third": subprocess.Popen([*CLI, *SEARCH, "--name", "third"], cwd=tmp_path,
                                  env=server["env"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True),
        "fourth": subprocess.Popen([*CLI, *SINGLE, "--name", "fourth"], cwd=tmp_path,
                                   env=server["env"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)}
    for name, proc in searches.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    client = MlflowClient(server["uri"])
    _recorded_once(client, "third", 4)
    _recorded_once(client, "fourth", 3)


def test_promote_against_the_server(server: dict[str, Any], tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "promote", "aug_cnn"], cwd=tmp_path, env=server["env"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(server["uri"])
    version = client.get_model_version_by_alias("pneumonia-classifier", "champion")
    best = client.search_runs(
        [client.get_experiment_by_name("pneumo-exp/aug_cnn").experiment_id],
        "tags.`pneumo.role` = 'trial' and attributes.status = 'FINISHED'",
        order_by=["metrics.best_val_auc DESC"], max_results=1)[0]
    members = version.tags["pneumo.source_run_ids"].split(",")
    assert best.info.run_id in members and len(members) == 3  # registry.top


@pytest.mark.parametrize(("args", "needle"), [
    (("worker", None, None), "--oracle must be HOST:PORT"),
    (("boss", "h:1", None), "--role must be chief or worker"),
    ((None, "h:1", None), "--oracle needs --role"),
    (("worker", "h:1", "chief"), "cannot be 'chief'"),
])
def test_role_arguments_are_checked(args: tuple, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        role_from_args(*args)


def test_roles() -> None:
    assert role_from_args(None, None, None) is None
    chief = role_from_args("chief", "10.0.0.1:8000", None)
    assert chief.is_chief and (chief.host, chief.port, chief.tuner_id) == ("10.0.0.1", 8000,
                                                                          "chief")
    assert role_from_args("worker", "h:1", "w7").tuner_id == "w7"
