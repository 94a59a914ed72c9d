"""A site's labelled folder (`NORMAL/`, `PNEUMONIA/`) and its optional `labels.csv` naming
each file's patient, perhaps its class, age and view (docs/sites.md, section 4). Patient ids
are kept only as salted hashes; a message names rows by number, never by a cell's value."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.dicom import age_years, patient_key
from pneumo_exp.errors import DataError

LABELS_CSV = "labels.csv"
COLUMNS = {"file": ("file",), "patient": ("patient", "patient_id"), "class": ("class", "label"),
           "age": ("patient_age", "age"), "view": ("view_position", "view")}  # names read
DELIMITERS = ",;\t"  # Excel writes ';' where the decimal mark is a comma
NAMED = 5  # files or rows named in a message, at most


def is_site_folder(root: Path) -> bool:
    """NORMAL/ and PNEUMONIA/ directly under `root`, and no train/."""
    return all((root / name).is_dir() for name in CLASS_NAMES) and not (root / "train").is_dir()


@dataclass(frozen=True)
class Row:
    line: int  # its line in the file: the header is line 1
    file: str
    patient: str  # the salted hash, never the id
    label: str | None  # the class it states, upper case
    age: float | None  # completed months / 12 (dicom.age_years)
    view: str | None  # upper case


@dataclass(frozen=True)
class Labels:
    path: Path
    rows: list[Row]
    has_age: bool
    has_view: bool


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def _lines(numbers: list[int]) -> str:
    return ("row " if len(numbers) == 1 else "rows ") + _some([str(n) for n in numbers])


def _table(path: Path) -> list[tuple[int, list[str]]]:
    """Every record of a CSV with its first line: UTF-8 (a BOM or not), the delimiter its
    header uses."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (line {line}): save it as 'CSV UTF-8' "
                        "(Excel) or in UTF-8.") from None
    first = text.split("\n", 1)[0]
    delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, start = [], 1
    try:
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num + 1}: not a CSV record ({e}). "
                        "Save the file as CSV from a spreadsheet.") from None
    return records


def read_labels(root: Path) -> Labels | None:
    """ROOT/labels.csv, every row checked; None without the CSV."""
    path = root / LABELS_CSV
    if not path.is_file():
        return None
    records = _table(path)
    header = records[0][1] if records else []
    lowered = [h.strip().lower() for h in header]
    cols = {key: next((lowered.index(n) for n in names if n in lowered), None)
            for key, names in COLUMNS.items()}
    if cols["file"] is None or cols["patient"] is None:
        raise DataError(f"{path} needs a header with a 'file' column and a 'patient' (or "
                        f"'patient_id') column; its header is: {', '.join(header) or 'empty'}.")
    read = {k: i for k, i in cols.items() if i is not None}
    width = max(read.values()) + 1
    rows: list[Row] = []
    short, blank, ages, twice = [], {k: [] for k in read}, [], []
    seen: dict[str, int] = {}
    for line, cells in records[1:]:
        if not any(c.strip() for c in cells):
            continue  # an empty line, or a spreadsheet's empty row
        if len(cells) < width:
            short.append(line)
            continue
        cell = {k: cells[i].strip() for k, i in read.items()}
        empty = [k for k, v in cell.items() if not v]
        for k in empty:
            blank[k].append(line)
        age = age_years(cell["age"], plain=True) if cell.get("age") else None
        if cell.get("age") and age is None:
            ages.append(line)
        if empty or (cell.get("age") and age is None):
            continue
        if cell["file"] in seen:
            twice.append(f"{cell['file']} (rows {seen[cell['file']]} and {line})")
            continue
        seen[cell["file"]] = line
        rows.append(Row(line, cell["file"], patient_key(cell["patient"]),
                        cell["class"].upper() if "class" in cell else None, age,
                        cell["view"].upper() if "view" in cell else None))
    problems = []
    if short:
        problems.append(f"{_lines(short)} {'has' if len(short) == 1 else 'have'} fewer cells "
                        f"than the columns read ({width}; a missing delimiter?)")
    for k, lines in blank.items():
        if lines:
            problems.append(f"{_lines(lines)} {'gives' if len(lines) == 1 else 'give'} no "
                            f"{header[read[k]].strip()}")
    if ages:
        problems.append(f"{_lines(ages)}: {header[read['age']].strip()} is not an age (a DICOM "
                        "age string such as 045Y, 006M, 003W, or years such as 45)")
    if twice:
        problems.append(f"{len(twice)} files are named by two rows: {_some(twice)}")
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + ". Give every row a file and its "
                        "patient (and, where the columns are there, its class, age and view); "
                        "no row was used.")
    return Labels(path, rows, "age" in read, "view" in read)


def csv_patients(root: Path, files: list[str], images: list[str] | None = None,
                 classes: bool = True) -> dict[str, str] | None:
    """The hashed patient of every image (paths relative to `root`, `CLASS/name`) from
    ROOT/labels.csv; None without the CSV. Its rows must name `files` (all the folder's);
    each of `images` (those that decoded; default: all of `files`) needs a row; with
    `classes`, a row's class must be its file's folder's."""
    labels = read_labels(root)
    if labels is None:
        return None
    by_name: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(Path(f).name, []).append(f)
    patients: dict[str, str] = {}
    unknown, wrong, both = [], [], []
    for row in labels.rows:
        named = row.file.replace("\\", "/")
        found = by_name.get(Path(named).name, [])
        rel = named if named in files else (found[0] if len(found) == 1 else None)
        if rel is None:
            (both if found else unknown).append(f"{row.file} (row {row.line})")
            continue
        folder = rel.split("/")[0]
        if classes and row.label is not None and (
                folder not in CLASS_NAMES
                or row.label not in (folder, str(CLASS_NAMES.index(folder)))):
            wrong.append(f"{row.file} (row {row.line}: {row.label}, in {folder}/)")
        patients[rel] = row.patient
    missing = [f for f in (files if images is None else images) if f not in patients]
    problems = [f"{len(found)} {what}: {_some(found)}" for found, what in (
        (unknown, "rows name no file of the folder"), (missing, "files have no row"),
        (wrong, "rows give another class than the file's folder"),
        (both, "rows name a file that both folders hold (give its path, NORMAL/name)")) if found]
    if problems:
        raise DataError(f"{labels.path} does not match the folder: " + "; ".join(problems)
                        + ". Give every image one row (file, patient), or remove the CSV to "
                        "take the patients from the file names.")
    return patients


def csv_population(root: Path) -> tuple[float | None, float | None, list[str]] | None:
    """The ages (youngest, oldest: completed months / 12, as dicom.age_years reads them) and
    views of a site's labels.csv, if it has an age or a view column: whom the site's
    version is for."""
    labels = read_labels(root)
    if labels is None or not (labels.has_age or labels.has_view):
        return None
    ages = [r.age for r in labels.rows if r.age is not None]
    views = sorted({r.view for r in labels.rows if r.view})
    return (min(ages) if ages else None, max(ages) if ages else None, views)
