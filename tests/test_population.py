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
from pydicom.dataset import Dataset

from pneumo_exp.config import PopulationConfig, load_config
from pneumo_exp.data.dicom import (
    ImageFacts,
    age_string,
    completed_years,
    patient_age,
    view_position,
)
from pneumo_exp.data.images import OUTSIDE, decode_image
from pneumo_exp.errors import ConfigError
from pneumo_exp.serving.population import judge

CHILDREN = PopulationConfig("children aged 1-5", 1, 5, ["PA", "AP"], "flag")


class Header(dict):
    """A stand-in for a pydicom Dataset's `get`."""


@pytest.mark.parametrize("header, months, missing", [
    (Header(PatientAge="006M"), 6, None),
    (Header(PatientAge="045Y"), 540, None),
    (Header(PatientAge="052W"), 11, None),  # 364 days: not yet a year
    (Header(PatientAge="3 years"), None, "unreadable"),
    (Header(PatientBirthDate="20190304", StudyDate="20240115"), 58, None),
    (Header(PatientBirthDate="20190304", AcquisitionDate="20240115"), 58, None),
    (Header(PatientBirthDate="2019.03.04", SeriesDate="20240304"), 60, None),  # ACR-NEMA
    (Header(PatientBirthDate="2019"), None, "no PatientAge, and no readable birth"),
    (Header(PatientBirthDate="20200101", StudyDate="20190101"), None, "before its birth"),
    (Header(), None, "no PatientAge"),
])
def test_the_age_from_a_header(header: Header, months: int | None,
                               missing: str | None) -> None:
    age, why = patient_age(header)
    if months is None:
        assert age is None and missing in why
    else:
        assert age == pytest.approx(months / 12) and why is None


def test_an_age_string_as_dicom_writes_it() -> None:
    assert [age_string(a) for a in (0.5, 1.9, 4.87, 45.2, 23 / 12, 2.0)] == [
        "006M", "022M", "004Y", "045Y", "023M", "002Y"]


def _born(birth: str, study: str = "20240101", **more: str) -> ImageFacts:
    age, why = patient_age(Header(PatientBirthDate=birth, StudyDate=study, **more))
    return ImageFacts(age=age, age_missing=why, view="PA")


def _aged(text: str) -> ImageFacts:
    age, why = patient_age(Header(PatientAge=text))
    return ImageFacts(age=age, age_missing=why, view="PA")


def test_ages_are_completed_years_whatever_the_header_says() -> None:
    """DICOM counts completed years: a child of 5 years and 10 months is 5, inside 1-5, as
    `005Y` is; the day before the first birthday the child is 0, on it 1; `011M` is 0."""
    assert judge(CHILDREN, _born("20180301")) is None  # 5 years 10 months
    assert judge(CHILDREN, _aged("005Y")) is None
    assert judge(CHILDREN, _aged("071M")) is None  # 5 years 11 months
    assert judge(CHILDREN, _born("20180301", "20190301")) is None  # the first birthday
    for facts, said in ((_born("20180301", "20190228"), "aged 11 months"),
                        (_aged("011M"), "aged 11 months"), (_aged("006M"), "aged 6 months"),
                        (_aged("072M"), "aged 6 years"), (_aged("006Y"), "aged 6 years"),
                        (_born("20170101", "20231231"), "aged 6 years")):  # 6 years 11 months
        judged = judge(CHILDREN, facts)
        assert judged is not None and judged.reason.startswith(OUTSIDE), facts
        assert f"{said} (this version is for patients aged 1-5)" in judged.reason


@pytest.mark.parametrize("text", ["45", "045", "4 5", "", "45 Y", "Y045"])
def test_an_unreadable_age_falls_back_to_the_dates(text: str) -> None:
    """An adult whose PatientAge is not an age string is still an adult: the birth and
    study dates say so, and `refuse` gives no probability."""
    strict = PopulationConfig("children", 1, 5, ["PA", "AP"], "refuse")
    facts = _born("19790301", "20240101", PatientAge=text)
    assert completed_years(facts.age) == 44 and facts.age_missing is None
    judged = judge(strict, facts)
    assert judged.refuse and "aged 44 years" in judged.reason


def test_a_bare_number_without_dates_is_read_as_years_and_says_so() -> None:
    strict = PopulationConfig("children", 1, 5, ["PA", "AP"], "refuse")
    adult = judge(strict, _aged("045"))
    assert adult.refuse and "aged 45 years" in adult.reason and "no unit" in adult.reason
    child = judge(strict, _aged("3"))
    assert not child.refuse and child.reason.startswith("age uncertain: its PatientAge has "
                                                        "no unit")


def test_views_are_compared_whatever_their_case_and_read_from_their_code() -> None:
    """`views: [pa, ap]` in a dataset's YAML holds PA; a lateral named only in
    ViewCodeSequence (SNOMED CT or the older SNOMED-RT code) is outside."""
    lower = PopulationConfig("children", 1, 5, ["pa", "ap"], "refuse")
    assert judge(lower, ImageFacts(age=3.0, view="PA")) is None
    assert judge(CHILDREN, ImageFacts(age=3.0, view="pa")) is None
    for code, scheme, view in (("399173006", "SCT", "LL"), ("R-10232", "SRT", "RL"),
                               ("399067008", "SCT", "LATERAL"), ("272479007", "SCT", "PA"),
                               ("R-10206", "SRT", "AP")):
        header = Header(PatientAge="003Y", ViewPosition="", ViewCodeSequence=[
            Header(CodeValue=code, CodingSchemeDesignator=scheme, CodeMeaning="x")])
        assert view_position(header) == view
        judged = judge(lower, ImageFacts(age=3.0, view=view_position(header)))
        assert (judged is None) == (view in ("PA", "AP")), code
        if judged is not None:
            assert judged.refuse and f"a {view} view" in judged.reason


def test_de_identification_keeps_the_age_and_the_view_code() -> None:
    """What de-identification keeps judges as the original does: the age from the dates
    (which are not kept), a bare number as it came, the view's code without the rest."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from pneumo_exp.data.deidentify import deidentified

    def original(**values: object) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for key, value in values.items():
            setattr(ds, key, value)
        return ds

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399173006", "SCT", "left"
    item.add_new(0x00091010, "LO", "PRIVATE DOE^JANE")
    kept = deidentified(original(PatientAge="045", PatientBirthDate="20180301",
                                 StudyDate="20240101", ViewCodeSequence=[item]))
    assert kept.PatientAge == "005Y" and "PatientBirthDate" not in kept
    assert view_position(kept) == "LL" and 0x00091010 not in kept.ViewCodeSequence[0]
    bare = deidentified(original(PatientAge="45"))
    assert patient_age(bare)[0] == 45 and "no unit" in patient_age(bare)[1]


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
    population = PopulationConfig("children aged 1-5", 1, 5, ["pa", "ap"], policy)
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
                            ("lateral.dcm", "003Y", "LL"), ("unknown.dcm", "", "AP"),
                            ("dated.dcm", "045", "PA"), ("coded.dcm", "003Y", "")):
        born = "19790301" if name == "dated.dcm" else ""  # the study: 2024-01-15
        ds = dcmread(write_dicom(pixels, folder / name, birth_date=born))
        if age:
            ds.PatientAge = age
        ds.ViewPosition = view
        if name == "coded.dcm":  # a lateral named only by its code
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator = "399173006", "SCT"
            ds.ViewCodeSequence = [code]
        ds.save_as(folder / name, enforce_file_format=True)
    assert main(["predict", "--model", "models:/for-children/1", "--format", "csv",
                 str(folder)]) == 0
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(
        capsys.readouterr().out))}
    assert rows["child.dcm"]["probability"] and not rows["child.dcm"]["check"]
    assert rows["plain.png"]["probability"] and not rows["plain.png"]["check"]
    assert "age unknown" in rows["unknown.dcm"]["check"] and rows["unknown.dcm"]["probability"]
    for name, why in (("adult.dcm", "aged 45 years"), ("lateral.dcm", "a LL view"),
                      ("dated.dcm", "aged 44 years"), ("coded.dcm", "a LL view")):
        if policy == "refuse":
            assert rows[name]["label"] == OUTSIDE and not rows[name]["probability"]
            assert why in rows[name]["reason"]
        else:
            assert rows[name]["probability"] and why in rows[name]["check"]


def test_a_population_leaves_out_another_only_where_no_age_meets() -> None:
    """What a site version's card says of its base's patients rests on this: a range that
    leaves out every age of the other's, and none that meets it or bounds nothing."""
    from pneumo_exp.settings import PopulationConfig

    children = PopulationConfig(min_age=1, max_age=5)
    assert PopulationConfig(min_age=6, max_age=83).leaves_out(children)
    assert PopulationConfig(max_age=0.5).leaves_out(children)
    assert not PopulationConfig(min_age=5, max_age=83).leaves_out(children)  # 5 is in both
    assert not PopulationConfig().leaves_out(children)
    assert not PopulationConfig(min_age=6).leaves_out(PopulationConfig())
    assert not PopulationConfig(min_age=6).leaves_out(None)
