"""A site version through the same search, tracking and registry: `search site` from a
registered base on a site's labelled folder, `promote site`; and the site's bad inputs."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
from conftest import _xray, checked_contract, make_site_folder, tiny_base
from PIL import Image

from pneumo_exp.tracking.names import CHAMPION, TAG_BASE_VERSION, TAG_SITE

SIZE = 32


def _base_version() -> None:
    """'base' v1: a small batch-normalized network at 32 px, registered as promote would."""
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.settings import PopulationConfig
    from pneumo_exp.tracking.store import connect

    connect()
    keras.utils.set_random_seed(0)
    model = tiny_base(SIZE)
    children = PopulationConfig("children aged 1-5", 1, 5, ["PA", "AP"], "flag")
    with mlflow.start_run():
        write_version("base", checked_contract([model], SIZE, population=children), [model],
                      {})


@pytest.fixture
def site(workdir: Path) -> dict[str, Any]:
    _base_version()
    return {"folder": make_site_folder(workdir / "north_scans")}


def _search(folder: Path, *extra: str) -> int:
    from pneumo_exp.cli import main

    return main(["search", "site", "--base", "models:/base/1", "--data", str(folder),
                 "--site", "north", "--max-trials", "2", "--set", "space.epochs=1",
                 "--set", "search.num_initial_points=2", *extra])


def test_a_site_version_is_searched_tracked_and_registered(site: dict[str, Any],
                                                           capsys: pytest.CaptureFixture
                                                           ) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    from pneumo_exp.tracking.store import connect

    assert _search(site["folder"]) == 0
    client = connect()
    experiment = client.get_experiment_by_name("pneumo-exp/site")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and all(r.data.tags[TAG_BASE_VERSION] == "base/1" for r in runs)
    assert all(r.data.tags[TAG_SITE] == "north" for r in runs)
    capsys.readouterr()
    assert main(["promote", "site", "--site", "north"]) == 0
    out = capsys.readouterr().out
    assert "alias site-north" in out and "the site's validation: AUC" in out
    version = client.get_model_version_by_alias("pneumonia-classifier", "site-north")
    assert version.tags[TAG_BASE_VERSION] == "base/1"
    assert "site north" in version.description and "`base/1`" in version.description
    assert CHAMPION not in version.aliases and "challenger" not in version.aliases
    model = classifier(load("models:/pneumonia-classifier@site-north"))
    population = model.contract.population  # the site's patients, not the base's children
    assert (population.min_age, population.max_age) == (30, 49)
    assert population.views == ["AP", "PA"]


def test_a_base_that_is_not_registered_is_named(site: dict[str, Any],
                                                capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.tracking.store import connect

    assert main(["search", "site", "--base", "models:/nowhere/3", "--data",
                 str(site["folder"]), "--site", "north"]) != 0
    err = capsys.readouterr().err
    assert "BASE=models:/nowhere/3 is not a registered version" in err
    assert not connect().search_model_versions("name = 'pneumonia-classifier'")


def test_a_labels_csv_that_does_not_match_names_the_files(site: dict[str, Any],
                                                          capsys: pytest.CaptureFixture
                                                          ) -> None:
    folder = site["folder"]
    rows = (folder / "labels.csv").read_text().splitlines()
    rows = [*rows[:-2], "PNEUMONIA,99999999_000.png,40,PA,99999999"]  # 2 files lose their row
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert _search(folder) != 0
    err = capsys.readouterr().err
    assert "1 rows name no file of the folder: 99999999_000.png" in err
    assert "2 files have no row" in err


def test_a_site_of_one_class_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    _base_version()
    folder = make_site_folder(workdir / "one_class", pneumonia=0)
    assert _search(folder) != 0
    assert "PNEUMONIA" in capsys.readouterr().err
    (folder / "PNEUMONIA").rmdir()  # no folder of the class at all: said so, not train/
    assert _search(folder) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this one holds NORMAL/ but no PNEUMONIA/" in err[0], err


def test_mixed_colour_modes_read_as_grayscale(tmp_path: Path) -> None:
    """An RGBA or palette PNG of an X-ray reads as the grayscale one: alpha dropped, not
    darkening."""
    from pneumo_exp.data.images import decode_image

    gray = _xray(np.random.default_rng(0), 1, 48)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    expected = decode_image(tmp_path / "gray.png", 32, 1)
    for name in ("rgba.png", "palette.png"):
        assert np.abs(decode_image(tmp_path / name, 32, 1).astype(int)
                      - expected.astype(int)).max() <= 1, name


def _write_csv(folder: Path, rows: list[list[str]], *, bom: bool = False,
               delimiter: str = ",") -> None:
    with (folder / "labels.csv").open("w", newline="", encoding="utf-8-sig" if bom
                                      else "utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)


def _rows(folder: Path) -> list[list[str]]:
    with (folder / "labels.csv").open(newline="") as f:
        return list(csv.reader(f))


def _load(folder: Path) -> Any:
    from pneumo_exp.config import DataConfig
    from pneumo_exp.data.dataset import load_training_data

    return load_training_data(DataConfig(root=str(folder), image_size=SIZE,
                                         val_fraction=0.25), seed=0)


def test_a_labels_csv_from_a_spreadsheet_reads_as_written(workdir: Path) -> None:
    """Excel's 'CSV UTF-8' (a byte order mark), its ';' where the decimal mark is a comma,
    and DICOM age strings: the rows read, every age counts (003W is 0 years, 045Y 45)."""
    from pneumo_exp.data.site_folder import csv_population

    folder = make_site_folder(workdir / "excel")
    rows = _rows(folder)
    rows[1][2], rows[2][2], rows[3][2] = "045Y", "006M", "003W"
    rows[4][2] = "4.5"
    _write_csv(folder, rows, bom=True, delimiter=";")
    low, high, views = csv_population(folder)
    assert (low, high, views) == (0, 49, ["AP", "PA"])  # 003W .. 49 (the oldest plain age)
    data = _load(folder)
    every = np.concatenate([data.train.groups, data.val.groups])
    assert len(set(every)) == 20  # two images a patient, as the CSV says
    ids = {row[4] for row in rows[1:]}  # kept as salted hashes, never as written
    assert all(g.startswith("patient-") for g in every) and not set(every) & ids


@pytest.mark.parametrize("break_it, said", [
    (lambda rows: rows[5].__delitem__(slice(3, None)), "row 6 has fewer cells"),
    (lambda rows: rows[7].__setitem__(4, " "), "row 8 gives no patient_id"),
    (lambda rows: rows[3].__setitem__(2, "forty"), "row 4: patient_age is not an age"),
    (lambda rows: rows[9].__setitem__(2, "19790301"), "row 10: patient_age is not an age"),
    (lambda rows: rows[2].__setitem__(1, rows[1][1]), "named by two rows: 00001000_000.png "
     "(rows 2 and 3)"),
])
def test_a_labels_csv_row_it_cannot_use_is_named(site: dict[str, Any], break_it: Any,
                                                 said: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A short row, a blank patient, an age that is none: one message naming the row, from
    the command line, before any trial, and without the cell's value (a birth date in the
    age column stays out of it)."""
    folder = site["folder"]
    rows = _rows(folder)
    break_it(rows)
    _write_csv(folder, rows)
    assert _search(folder) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and "19790301" not in err


def test_too_few_patients_for_the_folds_is_one_message(workdir: Path) -> None:
    from pneumo_exp.errors import DataError

    folder = make_site_folder(workdir / "few", normal=4, pneumonia=2)  # 3 patients, 4 folds
    with pytest.raises(DataError, match=r"3 patients \(of 6 images\) are too few .* at least "
                                        r"4 patients"):
        _load(folder)


def test_a_file_that_is_no_image_needs_no_row_and_is_named(workdir: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    folder = make_site_folder(workdir / "notes")
    (folder / "NORMAL" / "notes.txt").write_text("scanned on the north wing\n")
    (folder / "NORMAL" / "Thumbs.db").write_bytes(b"\x00" * 64)
    data = _load(folder)
    assert sorted(name for name, _ in data.skipped) == ["NORMAL/Thumbs.db", "NORMAL/notes.txt"]
    assert "skipped NORMAL/notes.txt" in caplog.text
    assert len(data.train) + len(data.val) == 40


def test_a_labels_csv_that_is_not_utf8_names_its_line(workdir: Path) -> None:
    from pneumo_exp.data.site_folder import csv_population
    from pneumo_exp.errors import DataError

    folder = make_site_folder(workdir / "latin1")
    text = (folder / "labels.csv").read_text().splitlines()
    text[3] = text[3].replace("PA", "PA-é").replace("AP", "AP-é")
    (folder / "labels.csv").write_bytes(("\n".join(text) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(line 4\)"):
        csv_population(folder)


@pytest.mark.parametrize("normal, pneumonia, said", [
    (4, 4, "left the validation side without NORMAL images (patients: NORMAL 2, "
           "PNEUMONIA 2): it takes at least 4 patients of each class"),
    (8, 2, "left the training side without PNEUMONIA images (patients: NORMAL 4, "
           "PNEUMONIA 1)")])
def test_a_class_of_too_few_patients_for_both_sides_is_one_message(
        workdir: Path, normal: int, pneumonia: int, said: str) -> None:
    """Enough patients for the folds, too few of one class for both sides: the site's
    search would validate on one class (it ran, AUC undefined); one message instead."""
    from pneumo_exp.errors import DataError

    folder = make_site_folder(workdir / "few", normal=normal, pneumonia=pneumonia)
    with pytest.raises(DataError, match=re.escape(said)):
        _load(folder)
