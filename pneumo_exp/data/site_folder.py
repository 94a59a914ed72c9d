"""A site's labelled images as a dataset: a folder `NORMAL/` and `PNEUMONIA/`, and
optionally `labels.csv` naming each file's patient, for a site version's search (the
validation split by patient is cut from them; there is no test split).

The CSV has a header row with a `file` column (the file's name, or its path under the
folder) and a `patient` or `patient_id` column; a `class` or `label` column, if there, must
agree with the file's folder. Each patient id is kept only as its salted hash
(dicom.patient_key). Without a CSV, a DICOM object's PatientID is the patient, else the id
the file name carries (data/split.py: `00001300_000.png` -> `00001300`), else the file.
A CSV whose rows name no file, or that leaves files without a row, stops with one message
naming them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.dicom import patient_key
from pneumo_exp.errors import DataError

LABELS_CSV = "labels.csv"
FILE_COLUMNS, PATIENT_COLUMNS, CLASS_COLUMNS = ("file",), ("patient", "patient_id"), (
    "class", "label")
AGE_COLUMNS, VIEW_COLUMNS = ("patient_age", "age"), ("view_position", "view")
NAMED = 5  # files named in a message, at most


def is_site_folder(root: Path) -> bool:
    """NORMAL/ and PNEUMONIA/ directly under `root`, and no train/."""
    return all((root / name).is_dir() for name in CLASS_NAMES) and not (root / "train").is_dir()


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV's header and its other rows."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0] if rows else []), rows[1:]


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def csv_patients(root: Path, files: list[str]) -> dict[str, str] | None:
    """The hashed patient of every file (paths relative to `root`, `CLASS/name`) from
    ROOT/labels.csv; None without the CSV."""
    path = root / LABELS_CSV
    if not path.is_file():
        return None
    header, rows = _read(path)
    name_col, patient_col = _column(header, FILE_COLUMNS), _column(header, PATIENT_COLUMNS)
    class_col = _column(header, CLASS_COLUMNS)
    if name_col is None or patient_col is None:
        raise DataError(f"{path} needs a header with a 'file' column and a 'patient' (or "
                        f"'patient_id') column; its header is: {', '.join(header) or 'empty'}.")
    by_name = {Path(f).name: f for f in files}
    patients: dict[str, str] = {}
    unknown, wrong = [], []
    for row in rows:
        if not row or not row[name_col].strip():
            continue
        named = row[name_col].strip()
        rel = named if named in files else by_name.get(Path(named).name)
        if rel is None:
            unknown.append(named)
            continue
        if class_col is not None and row[class_col].strip().upper() not in (
                rel.split("/")[0], str(CLASS_NAMES.index(rel.split("/")[0]))):
            wrong.append(f"{named} ({row[class_col].strip()} in the CSV, in {rel.split('/')[0]}/)")
        patients[rel] = patient_key(row[patient_col].strip())
    missing = [f for f in files if f not in patients]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} rows name no file of the folder: {_some(unknown)}")
    if missing:
        problems.append(f"{len(missing)} files have no row: {_some(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} rows give another class than the file's folder: "
                        f"{_some(wrong)}")
    if problems:
        raise DataError(f"{path} does not match the folder: " + "; ".join(problems)
                        + ". Give every file one row (file, patient), or remove the CSV to "
                        "take the patients from the file names.")
    return patients


def csv_population(root: Path) -> tuple[float | None, float | None, list[str]] | None:
    """The ages (youngest, oldest, in years) and views of a site's labels.csv, if it has
    an age or a view column: whom the site's version is for."""
    path = root / LABELS_CSV
    if not path.is_file():
        return None
    header, rows = _read(path)
    age_col, view_col = _column(header, AGE_COLUMNS), _column(header, VIEW_COLUMNS)
    if age_col is None and view_col is None:
        return None
    ages = [float(r[age_col]) for r in rows if age_col is not None and len(r) > age_col
            and r[age_col].strip().replace(".", "", 1).isdigit()]
    views = sorted({r[view_col].strip().upper() for r in rows
                    if view_col is not None and len(r) > view_col and r[view_col].strip()})
    return (min(ages) if ages else None, max(ages) if ages else None, views)
