"""A site version through the same search, tracking and registry: `search site` from a
registered base on a site's labelled folder, `promote site`; and the site's bad inputs."""

from __future__ import annotations

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
