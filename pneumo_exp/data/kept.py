"""What pneumo-exp keeps on disk besides the MLflow store, where, how large, and how it goes
away (`pneumo-exp cache`): each kind under the state folder is listed in docs/privacy.md. A
file's modification time is when it was last used, so `--older-than` clears what no command
has read for that long."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pneumo_exp.config import CACHE_DIR, PACS_DIR, STATE_DIR, TUNER_DIR

SALT_FILE = STATE_DIR / "patient_salt"
# name -> (folder, what it holds); the clearable caches first
KINDS = {"images": (CACHE_DIR, "decoded images (a .npz per split and preprocessing)"),
         "pacs": (PACS_DIR, "DICOM instances pulled from a PACS, de-identified"),
         "tuner": (TUNER_DIR, "tuner state of the searches (resuming needs it; "
                              "delete-search removes one)")}
CLEARABLE = ("images", "pacs")


@dataclass(frozen=True)
class Kept:
    name: str
    folder: Path
    what: str
    files: int
    bytes: int
    oldest: float | None  # modification times
    newest: float | None


def _files(folder: Path) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file()]  # none for a missing folder


def inventory() -> list[Kept]:
    """Each kind of state: its folder, how many files, how many bytes, oldest and newest."""
    out = []
    for name, (folder, what) in KINDS.items():
        files = _files(folder)
        times = [f.stat().st_mtime for f in files]
        out.append(Kept(name, folder, what, len(files), sum(f.stat().st_size for f in files),
                        min(times, default=None), max(times, default=None)))
    return out


def clear(kinds: tuple[str, ...], older_than_days: float | None = None) -> tuple[int, int]:
    """Delete the files of these kinds (not used for `older_than_days`, if given), and the
    folders left empty; (files, bytes) deleted."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    count = size = 0
    for name in kinds:
        folder = KINDS[name][0]
        for f in _files(folder):
            st = f.stat()
            if cutoff is None or st.st_mtime < cutoff:
                f.unlink()
                count, size = count + 1, size + st.st_size
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
    return count, size
