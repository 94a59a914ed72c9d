"""Patient ids from file names, and splits that keep each patient on one side."""

from __future__ import annotations

import re
import warnings
from pathlib import PurePath

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.errors import DataError

_PERSON = re.compile(r"^(person\d+)_")  # person1946_bacteria_4874 -> person1946
_NUMBERED = re.compile(r"^(.+)-\d+$")  # IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001 -> ...
_FOLLOW_UP = re.compile(r"^(\d+)_\d+$")  # NIH ChestX-ray8: 00001300_000 -> 00001300


def patient_id(name: str) -> str:
    """The patient in a file name, where the name carries one (the Kermany names, the NIH
    ChestX-ray8 image indexes): several images of one patient share it. Else the name."""
    stem = PurePath(name).stem
    for pattern in (_PERSON, _NUMBERED, _FOLLOW_UP):
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def group_codes(groups: np.ndarray) -> np.ndarray:
    """Each image's patient as an integer, numbered in the order patients first appear, so a
    split depends on which images share a patient, not on how a patient is written (the PNG
    and DICOM copies of a dataset, grouped by file-name ids and hashed PatientIDs, split
    alike; scikit-learn's splitters would order them by their labels)."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def group_kfold(n_splits: int, seed: int) -> StratifiedGroupKFold:
    """The seeded, shuffled, class-stratified patient folds of every split here."""
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def validation_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                     both_classes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `fraction` in val, class ratio kept, no patient on both sides:
    the first fold of a seeded StratifiedGroupKFold with round(1/fraction) folds. Too few
    patients for the folds, or (with `both_classes`: no other validation images join) a side
    left without a class, is one message."""
    n_splits = max(2, round(1 / fraction))
    codes = group_codes(groups)
    patients = len(np.unique(codes))
    if patients < n_splits:
        raise DataError(f"{patients} patient{'s' if patients != 1 else ''} (of {len(labels)} "
                        f"images) are too few to validate on a share of {fraction:g} of them "
                        f"by patient: that takes at least {n_splits} patients, one for each of "
                        f"{n_splits} folds. Add images of {n_splits - patients} more, or set a "
                        "larger data.val_fraction (fewer folds).")
    folds = group_kfold(n_splits, seed)
    with warnings.catch_warnings():  # a class of fewer patients than folds: said below
        warnings.simplefilter("ignore", UserWarning)
        train_idx, val_idx = next(folds.split(np.zeros(len(labels)), labels, codes))
    present = set(labels.tolist())
    for side, index in (("training", train_idx), ("validation", val_idx)):
        lacking = sorted(present - set(labels[index].tolist()))
        if both_classes and lacking:
            counts = ", ".join(f"{CLASS_NAMES[c]} {len(np.unique(codes[labels == c]))}"
                               for c in sorted(present))
            raise DataError(f"the split by patient left the {side} side without "
                            f"{CLASS_NAMES[lacking[0]]} images (patients: {counts}): it "
                            f"takes at least {n_splits} patients of each class, one for "
                            f"each of {n_splits} folds. Add images of more patients, or set a "
                            "larger data.val_fraction (fewer folds).")
    return train_idx, val_idx
