"""Ctrl-C and `kill` (SIGTERM) end a job cleanly: its runs are marked KILLED and the user is
told how to resume.

The handler raises KeyboardInterrupt at once, and also records the request: Python drops an
exception raised while it runs a weakref or __del__ callback, so training also checks the
record after every batch (`check`) and raises from a well-defined place.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _handler(signum: int, frame: object) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Also when started in the background, where the shell makes SIGINT ignored."""
    _requested.clear()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def check() -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
