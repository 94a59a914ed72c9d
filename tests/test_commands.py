"""Every documented command, run as a user runs it: each make target with its documented
variables (make runs the `pneumo-exp` console script with --make), and the console script
with its flags, on a tiny dataset with one epoch. A command the README documents cannot
break unseen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import make_folder_dataset

pytestmark = pytest.mark.slow  # real processes: make, the console script, servers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"EPOCHS": "1", "IMAGE_SIZE": "32", "SEED": "1", "TUNER": "random",
        "SET": "space.conv_blocks=2 train.batch_size=16"}


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


def make(work: Path, target: str, timeout: float = 300, **variables: str) -> str:
    """`make -f REPO/Makefile TARGET VAR=value ...` in `work`, with this interpreter's
    environment (VENV) and no install step (STAMP=)."""
    proc = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), target,
                           f"VENV={sys.prefix}", "STAMP=",
                           *(f"{k}={v}" for k, v in variables.items())],
                          cwd=work, env=_env(work), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"make {target}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def console(work: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(BIN / "pneumo-exp"), *args], cwd=work, env=_env(work),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"pneumo-exp {args}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder with a tiny dataset, a 2-trial search and a promoted ensemble of both, all
    through make."""
    work = tmp_path_factory.mktemp("commands")
    data = make_folder_dataset(work / "chest_xray", {"train": (20, 24), "val": (16, 16),
                                                     "test": (6, 6)}, size=32)
    out = make(work, "search", ARCH="aug_cnn", DATA=str(data), MAX_TRIALS="2", NAME="e2e",
               **TINY)
    # 1 epoch at 32 px learns too little for a candidate (validation AUC below 0.6)
    promoted = make(work, "promote", ARCH="aug_cnn", TOP="2", ANY_TRIAL="1")
    return {"work": work, "data": data, "search": out, "promote": promoted}


def test_search_and_promote(project: dict[str, Any]) -> None:
    assert "Trials of search 'e2e'" in project["search"]
    assert "2 of 2 trials completed" in project["search"]
    assert "Registered pneumonia-classifier version 1 (" in project["promote"]
    # TOP=2: both, or the better alone when their mean validates below it, said on "Members:"
    assert ("(ensemble of 2 trials" in project["promote"]
            or "alone is registered" in project["promote"])
    assert "Use it: make predict MODEL=models:/pneumonia-classifier/1" in project["promote"]


def test_cv_with_its_variables(project: dict[str, Any]) -> None:
    out = make(project["work"], "cv", ARCH="regularized", FOLDS="2", FROM="default",
               DATA=str(project["data"]), EPOCHS="1", IMAGE_SIZE="16")
    assert "regularized, 2-fold cross-validation of the default configuration" in out


def test_predict_evaluate_explain(project: dict[str, Any]) -> None:
    work, data = project["work"], project["data"]
    normal = sorted((data / "test" / "NORMAL").iterdir())
    out = make(work, "predict", MODEL="models:/pneumonia-classifier@champion",
               FILES=f"{normal[0]} {data / 'test' / 'PNEUMONIA'}")
    assert "# 7 files:" in out
    csv = console(work, "predict", "--model", "models:/pneumonia-classifier/1", "--format",
                  "csv", str(normal[0]))
    assert csv.splitlines()[0] == "file,probability,label,reason,check"
    out = make(work, "evaluate", DATA=str(data))
    assert f"on {data / 'test'} (6 NORMAL, 6 PNEUMONIA)" in out
    out = make(work, "explain", FILES=str(normal[0]), OUT="overlays")
    assert (work / "overlays" / f"{normal[0].stem}_gradcam.png").is_file(), out


def test_adapt_with_its_variables(project: dict[str, Any]) -> None:
    out = make(project["work"], "adapt", MODEL="models:/pneumonia-classifier/1",
               DATA=str(project["data"] / "train"), SITE="north")
    assert "Alias: site-north" in out


def test_listings(project: dict[str, Any]) -> None:
    work = project["work"]
    for runs in (make(work, "runs"), console(work, "runs")):
        assert "search-e2e" in runs
    for models in (make(work, "models"), console(work, "models")):
        assert "pneumonia-classifier" in models and "champion" in models
    assert "MAX_TRIALS" in make(work, "vars") and "MAX_TRIALS" in console(work, "vars")
    assert "make search" in make(work, "help")


def test_delete_search(project: dict[str, Any]) -> None:
    work = project["work"]
    console(work, "search", "aug_cnn", "--data", str(project["data"]), "--max-trials", "1",
            "--epochs", "1", "--image-size", "32", "--tuner", "random", "--name", "gone",
            "--set", "space.conv_blocks=2")
    out = make(work, "delete-search", NAME="gone", YES="1")
    assert "Deleted search 'gone'" in out
    assert "search-gone" not in console(work, "runs")


def test_data_fetch_and_sample(project: dict[str, Any]) -> None:
    work, data = project["work"], project["data"]
    archive = work / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in data.rglob("*"):
            z.write(f, f"chest_xray/{f.relative_to(data)}")
    out = make(work, "data", SOURCE=str(archive), TO="fetched")
    assert (work / "fetched" / "train" / "NORMAL").is_dir(), out
    console(work, "data", "sample", "--from", str(data), "--to", "sample", "--size", "16")
    assert (work / "sample" / "README.md").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(work: Path, target: str, port: int, path: str, **variables: str) -> int:
    """Start `make TARGET`, wait for HTTP 200 on `path`, stop it with one SIGTERM to make."""
    proc = subprocess.Popen(["make", "-s", "-f", str(REPO / "Makefile"), target,
                             f"VENV={sys.prefix}", "STAMP=", f"PORT={port}",
                             *(f"{k}={v}" for k, v in variables.items())],
                            cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.status
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"make {target} did not answer on port {port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.parametrize(("target", "path", "variables"), [
    ("ui", "/health", {}),
    ("server", "/health", {"WORKERS": "1"}),
    ("serve", "/ping", {"MODEL": "models:/pneumonia-classifier/1"}),
])
def test_servers_answer_and_stop(project: dict[str, Any], target: str, path: str,
                                 variables: dict[str, str]) -> None:
    assert _serving(project["work"], target, _free_port(), path, **variables) == 200
