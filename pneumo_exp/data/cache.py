"""Decode once: decoded splits are stored as uint8 .npz files keyed by a fingerprint of the
files (relative names, sizes, modification times), the preprocessing and the DICOM decoders
installed (a new plugin reads files that were skipped), so a changed dataset, image size or
decoder rebuilds. Patients are stored as grouping keys (PatientIDs only as salted hashes).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_exp.config import CACHE_DIR
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.fileio import atomic_path, touch

CACHE_FORMAT = 3  # bump when decoding changes, to invalidate old caches (3: no JPEG draft)


def fingerprint(entries: Iterable[Any], settings: dict[str, Any]) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, "settings": settings, "entries": list(entries)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(split: str, key: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or CACHE_DIR) / f"{split}-{key}.npz"


def load(path: Path) -> tuple[LabeledImages, list[tuple[str, str]]] | None:
    """The cached split, or None when absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = LabeledImages(z["images"], z["labels"], z["names"], z["groups"])
            skipped = list(zip(z["skipped_names"].tolist(), z["skipped_reasons"].tolist(),
                               strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    touch(path)
    return data, skipped


def save(path: Path, data: LabeledImages, skipped: list[tuple[str, str]]) -> None:
    names = np.array([s[0] for s in skipped], dtype=str)
    reasons = np.array([s[1] for s in skipped], dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=data.images, labels=data.labels, names=data.names.astype(str),
                 groups=data.groups.astype(str), skipped_names=names, skipped_reasons=reasons)
