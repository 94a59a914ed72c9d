"""Long-running servers (the MLflow UI, a tracking server, a model server) that stop as one:
each runs in its own process group, to which pneumo-exp forwards SIGINT, SIGTERM and SIGHUP;
on Linux pneumo-exp also gets a SIGTERM when its parent dies (make killed with -9, a closed
terminal), and the server one when pneumo-exp dies (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: receive SIGTERM when the parent process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_server(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run `cmd` in its own process group until it exits or a signal stops it (and its
    children). Returns its exit code (0 when stopped by a signal)."""
    _die_with_parent()
    proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None,
                            start_new_session=True, preexec_fn=_die_with_parent)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait(timeout=30 if stopping else None)
                break
            except subprocess.TimeoutExpired:  # stopping, and the group does not
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their master
            os.killpg(proc.pid, signal.SIGTERM)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopping else code
