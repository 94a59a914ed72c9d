"""Whom a version is for: the age and view a DICOM header states, judged against the
population the version carries; a refused image gets no probability, a flagged one a
note, and a PNG (no header) neither."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import checked_contract
from dicom_copies import write_dicom
from pydicom import dcmread

from pneumo_exp.config import PopulationConfig, load_config
from pneumo_exp.data.dicom import ImageFacts, age_string, patient_age
from pneumo_exp.data.images import OUTSIDE, decode_image
from pneumo_exp.errors import ConfigError
from pneumo_exp.serving.population import judge

CHILDREN = PopulationConfig("children aged 1-5", 1, 5, ["PA", "AP"], "flag")


class Header(dict):
    """A stand-in for a pydicom Dataset's `get`."""


@pytest.mark.parametrize("header, years, missing", [
    (Header(PatientAge="006M"), 0.5, None),
    (Header(PatientAge="045Y"), 45.0, None),
    (Header(PatientAge="3 years"), None, "unreadable"),
    (Header(PatientBirthDate="20190304", StudyDate="20240115"), 4.87, None),
    (Header(PatientBirthDate="20190304", AcquisitionDate="20240115"), 4.87, None),
    (Header(PatientBirthDate="2019"), None, "no PatientAge, nor a birth date"),
    (Header(), None, "no PatientAge"),
])
def test_the_age_in_years_from_a_header(header: Header, years: float | None,
                                        missing: str | None) -> None:
    age, why = patient_age(header)
    if years is None:
        assert age is None and missing in why
    else:
        assert age == pytest.approx(years, abs=0.01) and why is None


def test_an_age_string_as_dicom_writes_it() -> None:
    assert [age_string(a) for a in (0.5, 1.9, 4.87, 45.2)] == ["006M", "022M", "004Y", "045Y"]


def test_judged_against_the_population() -> None:
    assert judge(CHILDREN, ImageFacts(age=3.0, view="PA")) is None
    assert judge(CHILDREN, None) is None  # a PNG: no header
    assert judge(None, ImageFacts(age=45.0)) is None  # a version that states nobody
    adult = judge(CHILDREN, ImageFacts(age=45.0, view="PA"))
    assert adult.reason.startswith(OUTSIDE) and "aged 45 years" in adult.reason
    assert not adult.refuse  # the policy is flag
    lateral = judge(CHILDREN, ImageFacts(age=3.0, view="LL"))
    assert "a LL view" in lateral.reason
    unknown = judge(CHILDREN, ImageFacts(age_missing="it has no PatientAge", view="AP"))
    assert unknown.reason.startswith("age unknown: it has no PatientAge")
    strict = PopulationConfig("children", 1, 5, ["PA", "AP"], "refuse")
    assert judge(strict, ImageFacts(age=0.5)).refuse
    assert not judge(strict, ImageFacts(age_missing="x")).refuse  # said, not refused


def test_the_population_is_a_checked_setting() -> None:
    cfg = load_config("aug_cnn")
    assert (cfg.population.min_age, cfg.population.max_age) == (1, 5)  # Kermany's children
    with pytest.raises(ConfigError, match=r"population\.outside"):
        load_config("aug_cnn", {"population.outside": "ignore"})
    with pytest.raises(ConfigError, match=r"population\.min_age"):
        load_config("aug_cnn", {"population.min_age": 9})


def _png(pixels: np.ndarray) -> io.BytesIO:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return io.BytesIO(out.getvalue())


@pytest.mark.parametrize("policy", ["flag", "refuse"])
def test_a_version_flags_or_refuses_whom_it_is_not_for(workdir: Path, policy: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.tracking.store import connect

    connect()  # the project's store, as the commands use it
    inputs = keras.Input((16, 16, 1))
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    population = PopulationConfig("children aged 1-5", 1, 5, ["PA", "AP"], policy)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    folder = workdir / "scans"
    folder.mkdir()
    from PIL import Image
    Image.fromarray(pixels).save(folder / "plain.png")
    rng = np.random.default_rng(1)  # validation: images drawn as these are
    alike = np.stack([decode_image(_png(rng.integers(0, 256, (40, 40), dtype=np.uint8)), 16, 1)
                      for _ in range(200)])
    with mlflow.start_run():
        write_version("for-children", checked_contract([model], 16, alike,
                                                       population=population), [model], {})
    for name, age, view in (("child.dcm", "003Y", "PA"), ("adult.dcm", "045Y", "PA"),
                            ("lateral.dcm", "003Y", "LL"), ("unknown.dcm", "", "AP")):
        ds = dcmread(write_dicom(pixels, folder / name))
        if age:
            ds.PatientAge = age
        ds.ViewPosition = view
        ds.save_as(folder / name, enforce_file_format=True)
    assert main(["predict", "--model", "models:/for-children/1", "--format", "csv",
                 str(folder)]) == 0
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(
        capsys.readouterr().out))}
    assert rows["child.dcm"]["probability"] and not rows["child.dcm"]["check"]
    assert rows["plain.png"]["probability"] and not rows["plain.png"]["check"]
    assert "age unknown" in rows["unknown.dcm"]["check"] and rows["unknown.dcm"]["probability"]
    for name, why in (("adult.dcm", "aged 45 years"), ("lateral.dcm", "a LL view")):
        if policy == "refuse":
            assert rows[name]["label"] == OUTSIDE and not rows[name]["probability"]
            assert why in rows[name]["reason"]
        else:
            assert rows[name]["probability"] and why in rows[name]["check"]
