"""A throwaway PostgreSQL server on 127.0.0.1 for the cluster tests and bench/server_load.py:
Debian's packages (CI installs them), a new cluster in a temporary folder, trust
authentication, restartable (a fault the tests inject), stopped and removed afterwards.
When it cannot be started, `postgres` says why (Unavailable)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise Unavailable(f"no {name} (Debian: apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    uri: str  # postgresql://postgres@127.0.0.1:PORT/<database>
    restart: Callable[[], None]  # stop and start it again, same data and port


@contextlib.contextmanager
def postgres(database: str = "mlflow") -> Iterator[Postgres]:
    """A new server with one database, for the block."""
    initdb, pg_ctl, psql = _binary("initdb"), _binary("pg_ctl"), _binary("psql")
    try:
        import psycopg  # noqa: F401  (what MLflow's server connects with: SQLAlchemy's default)
    except ImportError as e:
        raise Unavailable("psycopg is not installed (pip install -e '.[dev]')") from e
    as_user: list[str] = []
    folder = tempfile.mkdtemp(prefix="pneumo-pg-")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user runs it
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as e:
            raise Unavailable("running as root and there is no 'postgres' user") from e
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise Unavailable(f"{os.path.basename(cmd[0])} failed: "
                              f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")

    def restart() -> None:
        run(pg_ctl, "-D", data, "-l", os.path.join(folder, "log"), "-w", "-m", "fast", "-o",
            options, "restart")

    try:
        run(initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(pg_ctl, "-D", data, "-l", os.path.join(folder, "log"), "-w", "-o", options, "start")
        run(psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
            f"CREATE DATABASE {database}")
        yield Postgres(f"postgresql://postgres@127.0.0.1:{port}/{database}", restart)
    finally:
        if os.path.isdir(data):
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
