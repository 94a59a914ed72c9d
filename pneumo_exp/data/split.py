"""Patient ids from file names, and a validation split that keeps each patient on one side."""

from __future__ import annotations

import re
from pathlib import PurePath

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

_PERSON = re.compile(r"^(person\d+)_")  # person1946_bacteria_4874 -> person1946
_NUMBERED = re.compile(r"^(.+)-\d+$")  # IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001 -> ...


def patient_id(name: str) -> str:
    """The Kermany file names carry the patient: several images of one patient share it."""
    stem = PurePath(name).stem
    for pattern in (_PERSON, _NUMBERED):
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def validation_split(labels: np.ndarray, groups: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `fraction` in val, class ratio kept, no patient on both sides.

    The first fold of a seeded StratifiedGroupKFold with round(1/fraction) folds.
    """
    n_splits = max(2, round(1 / fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(np.zeros(len(labels)), labels, groups))
    return train_idx, val_idx
