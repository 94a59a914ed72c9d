"""`pneumo-exp server` on 127.0.0.1 for the cluster tests and bench/server_load.py: started
on a free port, waited for, killed (the fault the tests inject) and restarted on the same
port, stopped after.

    with tracking_server(folder, backend="postgresql://...", admin_password=None) as server:
        server.uri                 # http://127.0.0.1:PORT
        server.kill(); server.start()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CLI = [sys.executable, "-m", "pneumo_exp.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    def __init__(self, folder: Path, backend: str | None, admin_password: str | None,
                 workers: int = 1) -> None:
        self.folder, self.backend, self.workers = folder, backend, workers
        self.admin_password = admin_password
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = folder / "server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a client of this server."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_TRACKING", "PNEUMO_EXP_ADMIN"))}
        return {**env, "MLFLOW_TRACKING_URI": self.uri, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}

    def start(self, timeout: float = 180) -> None:
        cmd = [*CLI, "server", "--port", str(self.port), "--workers", str(self.workers),
               "--artifacts-destination", str(self.folder / "artifacts")]
        if self.backend:
            cmd += ["--backend-store-uri", self.backend]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        if self.admin_password:
            cmd += ["--auth"]
            env["PNEUMO_EXP_ADMIN_PASSWORD"] = self.admin_password
        with self.log.open("a") as log:
            self.process = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the tracking server exited: "
                                       f"{self.log.read_text()[-2000:]}") from None
                if time.time() > deadline:
                    raise RuntimeError("the tracking server did not answer") from None
                time.sleep(0.5)

    def kill(self) -> None:
        """kill -9 of the server: pneumo-exp server and the process group of the mlflow
        server it started (its workers with it), as a crash would."""
        assert self.process is not None
        for child in _children(self.process.pid):  # run_server: a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _wait_port_free(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(c) for c in text.split()}


def _wait_port_free(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)


@contextlib.contextmanager
def tracking_server(folder: Path, backend: str | None = None,
                    admin_password: str | None = None,
                    workers: int = 1) -> Iterator[TrackingServer]:
    server = TrackingServer(folder, backend, admin_password, workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()
