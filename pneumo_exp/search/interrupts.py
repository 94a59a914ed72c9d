"""Ctrl-C and `kill` (SIGTERM) end a job cleanly: its runs marked KILLED, the user told how
to resume. The handler raises KeyboardInterrupt and records the request: Python drops an
exception raised in a weakref or __del__ callback, so training also checks the record after
every batch (`check`) and raises from a well-defined place."""

from __future__ import annotations

import signal
import sys
import threading

_requested = threading.Event()


def _handler(signum: int, frame: object) -> None:
    _requested.set()
    raise KeyboardInterrupt


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    """An interrupt lost in a callback is not an error to print: `check` raises it again."""
    if not isinstance(info.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(info)


def install() -> None:
    """Also when started in the background, where the shell makes SIGINT ignored."""
    _requested.clear()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    sys.unraisablehook = _unraisable


def check() -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
