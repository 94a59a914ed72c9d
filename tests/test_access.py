"""The team's server lets no one in who does not belong: a real `pneumo-exp server --auth`
(MLflow's basic-auth app) refuses anonymous requests and wrong passwords; a READ user
browses and predicts but cannot log, promote, adapt or delete; an EDIT user searches and
promotes; no password is printed, logged or stored."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_folder_dataset

from pneumo_exp.cli.main import main

CLI = [sys.executable, "-m", "pneumo_exp.cli"]
PASSWORDS = {"admin": "Adm1n-secret-8842", "editor": "Ed1tor-secret-5521",
             "reader": "Re4der-secret-9931"}
TINY = ["--max-trials", "1", "--epochs", "1", "--image-size", "32", "--tuner", "random",
        "--set", "space.conv_blocks=2", "--set", "tracking.gradcam_images=0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tracking_server import tracking_server

    root = tmp_path_factory.mktemp("auth")
    with tracking_server(root, admin_password=PASSWORDS["admin"]) as s:
        yield s


def _run(server: Any, user: str | None, *args: str, cwd: Path,
         password: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    creds = {} if user is None else {"MLFLOW_TRACKING_USERNAME": user,
                                      "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[user]}
    return subprocess.run([*CLI, *args], cwd=cwd, env=server.env(**creds, **env),
                          capture_output=True, text=True, timeout=600)


def _refused(proc: subprocess.CompletedProcess[str], status: int) -> bool:
    """Exit code 2 and one message naming the HTTP status, last, no traceback."""
    lines = proc.stderr.strip().splitlines()
    return (proc.returncode == 2 and f"(HTTP {status})" in lines[-1]
            and sum("refused" in line for line in lines) == 1
            and "Traceback" not in proc.stderr)


@pytest.mark.slow  # a real server
def test_anonymous_requests_and_wrong_passwords_are_refused(server: Any,
                                                            tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.uri}/api/2.0/mlflow/experiments/search?"
                               "max_results=1", timeout=30)
    assert e.value.code == 401
    assert _refused(_run(server, "admin", "runs", cwd=tmp_path, password="wrong-one"), 401)
    assert _refused(_run(server, None, "models", cwd=tmp_path), 401)


@pytest.mark.slow  # a dozen commands against the server
def test_read_and_edit_users(server: Any, tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "d", {"train": (24, 36), "val": (16, 16),
                                                "test": (6, 6)}, size=40)  # adapt needs 32
    outputs = []

    def run(user: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        proc = _run(server, user, *args, cwd=tmp_path, **env)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    for user in ("editor", "reader"):
        added = run("admin", "users", "add", user, PNEUMO_EXP_USER_PASSWORD=PASSWORDS[user])
        assert added.returncode == 0, added.stderr
    granted = run("admin", "users", "grant", "editor", "--permission", "EDIT",
                  "--experiment", "aug_cnn")
    assert granted.returncode == 0, granted.stderr
    searched = run("editor", "search", "aug_cnn", "--data", str(data), *TINY)
    assert searched.returncode == 0, searched.stderr[-2000:]
    promoted = run("editor", "promote", "aug_cnn", "--any-trial")  # 1 epoch: may not learn
    spare = run("editor", "search", "aug_cnn", "--data", str(data), *TINY, "--name", "spare")
    assert spare.returncode == 0, spare.stderr[-2000:]
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    granted = run("admin", "users", "grant", "reader", "--permission", "READ",
                  "--experiment", "aug_cnn", "--model", "pneumonia-classifier")
    assert granted.returncode == 0, granted.stderr

    scan = str(next((data / "test" / "NORMAL").iterdir()))
    assert run("reader", "runs").returncode == 0
    assert "pneumonia-classifier" in run("reader", "models").stdout
    predicted = run("reader", "predict", "--model", "models:/pneumonia-classifier/1", scan)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "# 1 files" in predicted.stdout
    for refused in (("search", "aug_cnn", "--data", str(data), *TINY, "--name", "mine"),
                    ("promote", "aug_cnn", "--any-trial", "--model-name", "readers"),
                    ("adapt", "--model", "models:/pneumonia-classifier/1", "--data",
                     str(data / "train"), "--site", "north"),
                    ("delete-search", "spare", "--yes")):
        proc = run("reader", *refused)
        assert _refused(proc, 403), (refused[0], proc.stderr[-1500:])

    # MANAGE: also delete (EDIT may not), and grant
    assert _refused(run("editor", "delete-search", "spare", "--yes"), 403)
    granted = run("admin", "users", "grant", "editor", "--permission", "MANAGE",
                  "--experiment", "aug_cnn")
    assert granted.returncode == 0, granted.stderr
    deleted = run("editor", "delete-search", "spare", "--yes")
    assert deleted.returncode == 0 and "Deleted search 'spare'" in deleted.stdout, \
        deleted.stderr[-1500:]

    stored = b"".join(p.read_bytes() for p in server.folder.rglob("*") if p.is_file())
    printed = "".join(outputs) + server.log.read_text()
    for password in PASSWORDS.values():
        assert password.encode() not in stored and password not in printed


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_a_server_others_reach_needs_a_login(host: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["server", "--host", host]) == 2
    err = capsys.readouterr().err
    assert "reachable from the network" in err and "--auth" in err and "--insecure" in err
    assert main(["ui", "--host", host]) == 2


def test_the_admin_password_is_never_a_default(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """AUTH=1 without PNEUMO_EXP_ADMIN_PASSWORD, or with a short one: one message, and no
    server starts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PNEUMO_EXP_ADMIN_PASSWORD", raising=False)
    assert main(["server", "--host", "127.0.0.1", "--auth"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no admin password: set PNEUMO_EXP_ADMIN_PASSWORD" in err[0]
    monkeypatch.setenv("PNEUMO_EXP_ADMIN_PASSWORD", "short")
    assert main(["server", "--host", "127.0.0.1", "--auth"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err


def test_insecure_serves_the_network_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """INSECURE=1 (--insecure) is what lets a server without a login face the network, and
    it is said."""
    import argparse

    from pneumo_exp.cli.commands.store import _open_to_the_network
    from pneumo_exp.errors import UserError

    with pytest.raises(UserError, match="reachable from the network"):
        _open_to_the_network(argparse.Namespace(host="10.1.2.3", insecure=False), False)
    caplog.set_level("WARNING")
    _open_to_the_network(argparse.Namespace(host="10.1.2.3", insecure=True), False)
    assert "without authentication (INSECURE)" in caplog.text
