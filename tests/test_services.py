"""Servers stop as one: a signal to make (or to pneumo-exp) stops the server and every
process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes and servers

# A "server" that starts a worker, like mlflow's uvicorn/gunicorn, and writes the pids.
SERVER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waits for its parent, it does not run
        return f.read().split()[2] != "Z"


def _wait_for(path: Path) -> list[int]:
    for _ in range(100):
        if path.is_file() and path.read_text():
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.1)
    raise AssertionError("the server did not start")


@pytest.mark.parametrize("stop", ["make", "pneumo-exp"])
def test_one_signal_stops_the_server_and_its_workers(tmp_path: Path, stop: str) -> None:
    script, pids = tmp_path / "server.py", tmp_path / "pids"
    script.write_text(SERVER)
    (tmp_path / "run.py").write_text(
        "import sys\nfrom pneumo_exp.cli.processes import run_server\n"
        f"sys.exit(run_server([sys.executable, {str(script)!r}, {str(pids)!r}]))\n")
    (tmp_path / "Makefile").write_text(f"serve:\n\t{sys.executable} run.py\n")
    make = subprocess.Popen(["make", "-s", "serve"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    server, worker = _wait_for(pids)
    if stop == "make":
        make.send_signal(signal.SIGTERM)
    else:
        pneumo = int(subprocess.check_output(["pgrep", "-P", str(make.pid)]).split()[0])
        os.kill(pneumo, signal.SIGTERM)
    make.wait(timeout=30)
    for _ in range(100):
        if not _alive(server) and not _alive(worker):
            break
        time.sleep(0.1)
    assert not _alive(server) and not _alive(worker)
