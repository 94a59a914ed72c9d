"""Distributed search on 127.0.0.1: a real MLflow tracking server on PostgreSQL, Keras
Tuner's chief and two workers; a worker killed mid-trial, the chief killed and started
again, the tracking server and PostgreSQL restarted under a running search; two searches
at once, and promotion against the server. After each fault: every planned trial recorded
once, none left RUNNING, no metric point lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pneumo_exp.errors import ConfigError
from pneumo_exp.search.distributed import free_port, role_from_args

pytestmark = pytest.mark.slow  # real processes and servers

CLI = [sys.executable, "-m", "pneumo_exp.cli"]
COMMON = ["--epochs", "1", "--image-size", "32", "--tuner", "random", "--set",
          "space.conv_blocks=2", "--set", "tracking.gradcam_images=0", "--set",
          "search.screen_trials=0"]
SINGLE = ["search", "aug_cnn", "--max-trials", "3", *COMMON]
SEARCH = ["search", "aug_cnn", "--workers", "2", "--max-trials", "4", *COMMON]
# Faults strike mid-trial: trials of 2 epochs leave time to find one running.
LONGER = ["search", "aug_cnn", "--max-trials", "4", "--epochs", "2", "--image-size", "32",
          "--tuner", "random", "--set", "space.conv_blocks=2", "--set",
          "tracking.gradcam_images=0", "--set", "search.screen_trials=0"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`pneumo-exp server` on a free 127.0.0.1 port, its runs and registry in PostgreSQL,
    its artifacts served by the server; one server process, as 2 cores start 4 slowly.
    Skipped, saying why, where PostgreSQL cannot be started."""
    from postgres import Unavailable, postgres
    from tracking_server import tracking_server

    root = tmp_path_factory.mktemp("server")
    with contextlib.ExitStack() as stack:
        try:
            db = stack.enter_context(postgres())
        except Unavailable as e:
            pytest.skip(f"PostgreSQL could not be started: {e}")
        server = stack.enter_context(tracking_server(root, db.uri))
        yield {"uri": server.uri, "root": root, "db": db, "server": server,
               "env": server.env()}


@pytest.fixture
def server(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster


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
    proc = subprocess.run([*CLI, "promote", "aug_cnn", "--any-trial"], cwd=tmp_path,
                          env=server["env"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(server["uri"])
    version = client.get_model_version_by_alias("pneumonia-classifier", "champion")
    best = client.search_runs(
        [client.get_experiment_by_name("pneumo-exp/aug_cnn").experiment_id],
        "tags.`pneumo.role` = 'trial' and attributes.status = 'FINISHED'",
        order_by=["metrics.best_val_auc DESC"], max_results=1)[0]
    members = version.tags["pneumo.source_run_ids"].split(",")
    # registry.top: 3, or the best alone when the ensemble validates below it
    assert best.info.run_id in members
    assert len(members) == 3 or "alone is registered" in proc.stdout


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


# ---- faults: each strikes while a trial runs -------------------------------------------
def _wait_for(what: Callable[[], bool], proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until `what` holds (each check may fail while a server is down)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            if what():
                return
        assert proc.poll() is None, "the search ended before the fault could strike"
        time.sleep(0.3)
    raise AssertionError("the search never reached the point of the fault")


def _trial_running(client: MlflowClient, name: str, finished: int = 0) -> Callable[[], bool]:
    def check() -> bool:
        _, children = _search_runs(client, name)
        statuses = [r.info.status for r in children]
        return "RUNNING" in statuses and statuses.count("FINISHED") >= finished
    return check


def _nothing_lost(client: MlflowClient, name: str, trials: int, epochs: int) -> None:
    """Every planned trial finished once, none RUNNING, each with a metric point per epoch
    (one, not two: a retried request must not log twice) and its model."""
    import mlflow

    parent, children = _search_runs(client, name)
    assert parent.info.status == "FINISHED"
    finished = [r for r in children if r.info.status == "FINISHED"]
    runs = sorted((int(r.data.tags["pneumo.trial_id"]), r.data.tags.get("pneumo.tuner_id"),
                   r.info.status, r.info.start_time % 10**6, (r.info.end_time or 0) % 10**6)
                  for r in children)
    assert sorted(int(r.data.tags["pneumo.trial_id"]) for r in finished) == list(
        range(trials)), runs
    assert not [r for r in children if r.info.status == "RUNNING"]
    for run in finished:
        trained = int(run.data.metrics["epochs"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")]
        assert sorted(steps) == list(range(trained)) and trained <= epochs, steps
        assert mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id], output_format="list",
            filter_string=f"source_run_id = '{run.info.run_id}'")


@pytest.mark.parametrize("fault", ["tracking server", "PostgreSQL"])
def test_a_restart_under_the_search_loses_nothing(fault: str, cluster: dict[str, Any],
                                                 tmp_path: Path) -> None:
    import mlflow

    name = f"restart-{fault.split()[0].lower()}"
    mlflow.set_tracking_uri(cluster["uri"])
    client = MlflowClient(cluster["uri"])
    search = subprocess.Popen([*CLI, *LONGER, "--workers", "2", "--name", name],
                              cwd=tmp_path, env=cluster["env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    _wait_for(_trial_running(client, name), search)
    started = time.time()
    if fault == "tracking server":
        cluster["server"].kill()
        time.sleep(3)  # down for a while: the clients' requests wait and retry
        cluster["server"].start()
    else:
        cluster["db"].restart()
    _, err = search.communicate(timeout=900)
    assert search.returncode == 0, err[-3000:]
    print(f"{fault} restarted; the search finished {time.time() - started:.0f} s later")
    _nothing_lost(client, name, trials=4, epochs=2)


def test_the_chief_killed_and_started_again(cluster: dict[str, Any], tmp_path: Path) -> None:
    """The cluster way: a chief and two workers, each its own process; the chief killed
    after a trial ends, then started again with the same command: it resumes from the
    oracle's saved state, and the workers, waiting on its address, carry on."""
    import mlflow

    mlflow.set_tracking_uri(cluster["uri"])
    client = MlflowClient(cluster["uri"])
    oracle = f"127.0.0.1:{free_port()}"
    base = [*CLI, *LONGER, "--name", "chief-restart", "--oracle", oracle]

    def start(*role: str) -> subprocess.Popen:
        return subprocess.Popen([*base, "--role", *role], cwd=tmp_path, env=cluster["env"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    chief = start("chief")
    workers = [start("worker", "--worker-id", f"w{i}") for i in range(2)]
    _wait_for(_trial_running(client, "chief-restart", finished=1), chief)
    started = time.time()
    chief.send_signal(signal.SIGKILL)
    chief.wait()
    time.sleep(2)
    chief = start("chief")
    for proc in [chief, *workers]:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    print(f"chief restarted; the search finished {time.time() - started:.0f} s later")
    _nothing_lost(client, "chief-restart", trials=4, epochs=2)
