"""Distributed search with Keras Tuner's own chief/worker mode (docs/cluster.md): the chief
runs the oracle and the parent run, the workers train trials under it. Keras Tuner reads its
role from KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and _PORT; `run_local` starts a chief
and N workers on this machine and restarts a worker that dies."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pneumo_exp.errors import ConfigError, InterruptedByUser

log = logging.getLogger(__name__)

CHIEF = "chief"
MAX_RESTARTS = 3


@dataclass(frozen=True)
class Role:
    name: str  # "chief" or "worker"
    tuner_id: str
    host: str
    port: int

    @property
    def is_chief(self) -> bool:
        return self.name == CHIEF


def role_from_args(role: str | None, oracle: str | None, worker_id: str | None) -> Role | None:
    """The process's role, from --role/--oracle/--worker-id; None when not distributed."""
    if role is None:
        if oracle:
            raise ConfigError("--oracle needs --role chief or --role worker.")
        return None
    if role not in (CHIEF, "worker"):
        raise ConfigError(f"--role must be chief or worker; got {role!r}.")
    host, sep, port = (oracle or "").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--oracle must be HOST:PORT of the chief; got {oracle!r}.")
    tuner_id = CHIEF if role == CHIEF else (worker_id or f"worker-{socket.gethostname()}")
    if tuner_id == CHIEF and role != CHIEF:
        raise ConfigError("--worker-id cannot be 'chief'.")
    return Role(role, tuner_id, host, int(port))


def activate(role: Role) -> None:
    """Keras Tuner's environment variables, set before the tuner is created."""
    os.environ["KERASTUNER_TUNER_ID"] = role.tuner_id
    os.environ["KERASTUNER_ORACLE_IP"] = role.host
    os.environ["KERASTUNER_ORACLE_PORT"] = str(role.port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(search_args: Sequence[str], workers: int, debug: bool = False) -> int:
    """A chief and `workers` workers of one search on this machine, as subprocesses of
    `pneumo-exp search`; a worker that dies is restarted with its id (up to 3 times)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}.")
    oracle = f"127.0.0.1:{free_port()}"
    base = [sys.executable, "-m", "pneumo_exp.cli", *(["--debug"] if debug else []), "search",
            *search_args, "--oracle", oracle]

    def start(role: str, worker_id: str | None = None) -> subprocess.Popen:
        extra = ["--role", role] + (["--worker-id", worker_id] if worker_id else [])
        return subprocess.Popen([*base, *extra])

    chief = start(CHIEF)
    procs = {f"worker{i}": start("worker", f"worker{i}") for i in range(workers)}
    log.info("Chief (pid %d) and %d workers (pids %s) on %s.", chief.pid, workers,
             ", ".join(str(p.pid) for p in procs.values()), oracle)
    restarts: Counter[str] = Counter()
    try:
        while chief.poll() is None:
            for worker_id, proc in procs.items():
                code = proc.poll()
                if code not in (None, 0) and restarts[worker_id] < MAX_RESTARTS:
                    restarts[worker_id] += 1
                    log.warning("%s exited with %s; restarting it (it resumes its trial).",
                                worker_id, code)
                    procs[worker_id] = start("worker", worker_id)
            time.sleep(1)
        for proc in procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.terminate()
    except KeyboardInterrupt:
        for proc in [chief, *procs.values()]:
            proc.terminate()
        for proc in [chief, *procs.values()]:
            proc.wait()
        raise InterruptedByUser("distributed search interrupted; run the same command again "
                                "to resume.") from None
    return chief.returncode
