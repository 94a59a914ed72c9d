"""Interrupted, concurrent and diverging searches: nothing finished is lost, nothing is left
RUNNING, nothing crashes with a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_folder_dataset
from mlflow.tracking import MlflowClient

from pneumo_exp.config import load_config
from pneumo_exp.search.run import run_search

pytestmark = pytest.mark.slow  # real processes and servers

CLI = [sys.executable, "-m", "pneumo_exp.cli"]
# On the bundled sample; 2 conv blocks fit 32 px whatever kernels a trial draws, so every
# trial finishes and the counts below do not depend on the random draws.
SEARCH = ["search", "aug_cnn", "--max-trials", "3", "--epochs", "1", "--image-size", "32",
          "--tuner", "random", "--set", "space.conv_blocks=2", "--set", "search.screen_trials=0"]


def _wait_for_completed_trial(cwd: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until Keras Tuner has recorded trial 0 as completed (its MLflow run is then closed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for f in cwd.glob(".pneumo/tuner/aug_cnn/*/trial_0/trial.json"):
            if json.loads(f.read_text())["status"] == "COMPLETED":
                return
        assert proc.poll() is None, "the search ended before its first trial completed"
        time.sleep(0.2)
    raise AssertionError("trial 0 did not complete in time")


def _trial_runs(cwd: Path) -> tuple[MlflowClient, list[Any]]:
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("pneumo-exp/aug_cnn")
    return client, client.search_runs([exp.experiment_id], "tags.`pneumo.role` = 'trial'")


def test_kill_9_after_the_first_trial_then_resume(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, *SEARCH], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_completed_trial(tmp_path, proc)
    proc.kill()
    proc.wait()
    again = subprocess.run([*CLI, *SEARCH], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    client, runs = _trial_runs(tmp_path)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["pneumo.trial_id"] for r in finished) == ["0", "1", "2"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.data.tags["pneumo.trial_id"] == "0"]) == 1  # not retrained
    assert all(r.info.status == "KILLED" for r in runs if r not in finished)
    parents = client.search_runs([runs[0].info.experiment_id], "tags.`pneumo.role` = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["n_completed_trials"] == 3


def test_ctrl_c_says_how_to_resume_and_fresh_starts_over(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, *SEARCH], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_completed_trial(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Run the same command again to resume" in err and "--fresh" in err
    assert "Traceback" not in err
    client, runs = _trial_runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = client.search_runs([runs[0].info.experiment_id],
                                   "tags.`pneumo.role` = 'search'")
    assert parent.info.status == "KILLED"

    fresh = subprocess.run([*CLI, *SEARCH, "--fresh", "--max-trials", "1"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    parents = client.search_runs([runs[0].info.experiment_id], "tags.`pneumo.role` = 'search'",
                                 order_by=["attributes.start_time DESC"])
    assert [p.info.status for p in parents] == ["FINISHED", "KILLED"]
    children = client.search_runs([runs[0].info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert [(r.data.tags["pneumo.trial_id"], r.info.status) for r in children] == [
        ("0", "FINISHED")]  # trained again: a resumed search would train nothing


def test_concurrent_searches_share_one_store(tmp_path: Path) -> None:
    """Two architectures, and one architecture under two search names, at once, on a store
    that does not exist yet."""
    # 48 px: aug_cnn's second trial, its four-block initial point, fits
    common = ["--max-trials", "2", "--epochs", "1", "--image-size", "48", "--tuner", "random",
              "--set", "search.screen_trials=0"]
    commands = [["search", "aug_cnn", "--name", "first", *common],
                ["search", "aug_cnn", "--name", "second", *common],
                ["search", "baseline", *common]]
    procs = [subprocess.Popen([*CLI, *c], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for arch, n_searches in (("aug_cnn", 2), ("baseline", 1)):
        exp = client.get_experiment_by_name(f"pneumo-exp/{arch}")
        parents = client.search_runs([exp.experiment_id], "tags.`pneumo.role` = 'search'")
        assert len(parents) == n_searches
        for parent in parents:
            assert parent.info.status == "FINISHED"
            children = client.search_runs(
                [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]
            assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 1
                       for r in children)


def test_a_diverging_trial_fails_and_the_search_goes_on(workdir: Path) -> None:
    import keras_tuner as kt

    from pneumo_exp.hypermodels.cnn import AugCNN
    defaults = kt.HyperParameters()
    AugCNN((32, 32, 1)).build(defaults)
    space = {f"space.{k}": v for k, v in defaults.values.items()}  # all fixed ...
    space.update({"space.optimizer": "sgd", "space.learning_rate": [0.0001, 1.0e30]})  # but one
    data = make_folder_dataset(workdir / "d", {"train": (12, 12), "val": (4, 4)})
    cfg = load_config("aug_cnn", {"data.root": str(data), "data.image_size": 32,
                                  "search.max_trials": 2, "train.epochs": 1,
                                  "search.tuner": "random", **space})
    result = run_search(cfg, verbose=0)
    assert {k: result.trials[k] for k in ("trials", "completed_trials", "failed_trials")} == {
        "trials": 2, "completed_trials": 1, "failed_trials": 1}
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = {r.data.params["learning_rate"]: r for r in client.search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")}
    assert runs["0.0001"].info.status == "FINISHED"
    assert runs["1e+30"].info.status == "FAILED"
    assert "diverged" in runs["1e+30"].data.tags["pneumo.failure"]
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_cache_file_is_rebuilt_not_trusted(workdir: Path, damage: str) -> None:
    from pneumo_exp.data.sources import load_split, open_source
    data = make_folder_dataset(workdir / "d", {"train": (4, 4)})
    first = load_split(open_source(data), "train", 16, 1)
    (path,) = (workdir / ".pneumo" / "cache").glob("train-*.npz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00" * len(raw))
    again = load_split(open_source(data), "train", 16, 1)
    assert not again.from_cache and (again.data.images == first.data.images).all()
