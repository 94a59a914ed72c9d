"""Crash-safe writes: a file the project writes appears whole or not at all. And private
ones: what pneumo-exp keeps (decoded images, pulled DICOM objects, tuner state) is its
user's alone."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (a file of mode 0600, as mkstemp makes it);
    rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def touch(path: Path) -> None:
    """Mark a cache file as used now: `pneumo-exp cache --older-than` goes by it."""
    with contextlib.suppress(OSError):
        os.utime(path)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


PRIVATE_UMASK = 0o077  # new folders 0700, new files 0600


def keep_private(state_dir: Path) -> None:
    """Everything this process writes from now on is its user's alone (umask 077), and the
    state folder is 0700 with files 0600, a folder an earlier version left open included."""
    os.umask(PRIVATE_UMASK)  # a state folder made from now on is 0700
    if not state_dir.is_dir() or state_dir.stat().st_mode & 0o077 == 0:
        return
    for folder, _dirs, files in os.walk(state_dir):
        os.chmod(folder, 0o700)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), 0o600)
