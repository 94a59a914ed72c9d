"""The parsers of what a hospital writes, on any input (Hypothesis): DICOM age strings,
dates, views, labels.csv rows and whole DICOM headers. None raises anything but the
project's own errors (a DataError is the command line's one message; an unreadable image
is a line of its own), ages are DICOM's completed years in every form, and under
`population.outside: refuse` no adult gets a probability, whatever form the age takes."""

from __future__ import annotations

import csv
import io
import math
import tempfile
import warnings
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pneumo_exp.config import PopulationConfig
from pneumo_exp.data.dicom import (
    ImageFacts,
    age_string,
    age_years,
    completed_years,
    patient_age,
    view_position,
)
from pneumo_exp.data.images import OUTSIDE, UnreadableImageError, read_image
from pneumo_exp.data.site_folder import csv_patients, csv_population, read_labels
from pneumo_exp.errors import DataError
from pneumo_exp.serving.population import judge

STRICT = PopulationConfig("children aged 1-5", 1, 5, ["PA", "AP"], "refuse")
PER_YEAR = {"D": Fraction(1461, 4), "W": Fraction(1461, 28), "M": Fraction(12), "Y": Fraction(1)}
ASCII = st.characters(min_codepoint=32, max_codepoint=126)
FEW = settings(max_examples=150, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])

age_strings = st.builds(lambda n, unit: f"{n:03d}{unit}", st.integers(0, 999),
                        st.sampled_from("DWMY"))
ages = st.one_of(age_strings, st.text(max_size=12), st.from_regex(r"\A ?[0-9]{1,4} ?\Z"),
                 age_strings.map(str.lower))
dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
date_texts = st.one_of(dates.map(lambda d: d.strftime("%Y%m%d")),
                       dates.map(lambda d: d.strftime("%Y.%m.%d")), st.text(max_size=10))


class Header(dict):
    """A stand-in for a pydicom Dataset's `get`."""


def _birthdays(born: date, seen: date) -> int:
    """Completed years by counting anniversaries (29 February's on 1 March)."""
    years = 0
    while True:
        year = born.year + years + 1
        try:
            anniversary = born.replace(year=year)
        except ValueError:
            anniversary = date(year, 3, 1)
        if anniversary > seen:
            return years
        years += 1


@given(st.integers(0, 999), st.sampled_from("DWMY"), st.booleans())
def test_an_age_string_is_its_completed_units(n: int, unit: str, lower: bool) -> None:
    text = f"{n:03d}{unit.lower() if lower else unit}"
    age = age_years(text)
    assert completed_years(age) == math.floor(Fraction(n) / PER_YEAR[unit])
    # the same age written back reads as the same completed years (and months below 2)
    assert completed_years(age_years(age_string(age))) == completed_years(age)
    if age < 2:
        assert age_years(age_string(age)) == age


@given(age_strings, age_strings)
def test_age_strings_compare_as_their_ages(one: str, other: str) -> None:
    """005Y and 071M are 5; 011M and 052W are 0: the order of completed years is the
    order of the ages the strings state (to within their unit)."""
    a, b = age_years(one), age_years(other)
    true_a = Fraction(int(one[:3])) / PER_YEAR[one[3]]
    true_b = Fraction(int(other[:3])) / PER_YEAR[other[3]]
    if math.floor(true_a) < math.floor(true_b):
        assert completed_years(a) < completed_years(b)


@given(ages, st.text(max_size=12), date_texts, date_texts,
       st.sampled_from(["StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]))
def test_any_age_text_reads_or_says_why(text: str, plain: str, birth: str, study: str,
                                       key: str) -> None:
    assert age_years(plain, plain=True) is None or age_years(plain, plain=True) >= 0
    age, why = patient_age(Header({"PatientAge": text, "PatientBirthDate": birth, key: study}))
    assert (age is not None and age >= 0) or (age is None and why)
    if age_years(text) is not None:
        assert age == age_years(text) and why is None  # the header's own age first


@given(dates, dates, st.sampled_from(["", "45", "4 5", "abc", "045"]))
def test_dates_count_birthdays(born: date, seen: date, text: str) -> None:
    age, why = patient_age(Header(PatientAge=text, PatientBirthDate=born.strftime("%Y%m%d"),
                                  StudyDate=seen.strftime("%Y%m%d")))
    if seen >= born:
        assert completed_years(age) == _birthdays(born, seen) and why is None
    elif text in ("45", "045"):
        assert age == 45 and "no unit" in why
    else:
        assert age is None and "before its birth date" in why


views = st.sampled_from(["PA", "AP", "LL", "RL", "LATERAL", "LAT", "RLD", "OBL", ""])


@given(views, st.booleans(), st.lists(st.sampled_from(["PA", "AP", "LL"]), max_size=3),
       st.booleans(), st.sampled_from(["", " ", "\t"]))
def test_views_compare_whatever_their_case(view: str, lower: bool, allowed: list[str],
                                           lower_allowed: bool, pad: str) -> None:
    population = PopulationConfig("", None, None, [v.lower() if lower_allowed else v
                                                   for v in allowed], "refuse")
    written = pad + (view.lower() if lower else view) + pad
    facts = ImageFacts(view=view_position(Header(ViewPosition=written)))
    judged = judge(population, facts)
    outside = bool(allowed) and bool(view) and view not in allowed
    assert (judged is not None and judged.refuse) == outside
    if outside:
        assert f"a {view} view" in judged.reason


@given(st.sampled_from([("399173006", "LL"), ("R-10236", "LL"), ("399198007", "RL"),
                        ("R-10232", "RL"), ("399067008", "LATERAL"), ("R-102CD", "LATERAL"),
                        ("272479007", "PA"), ("R-10214", "PA"), ("399348003", "AP"),
                        ("R-10206", "AP")]), st.sampled_from(["", "  "]))
def test_a_view_named_only_by_its_code(code_view: tuple[str, str], empty: str) -> None:
    code, view = code_view
    header = Header(ViewPosition=empty, ViewCodeSequence=[Header(CodeValue=code)])
    judged = judge(STRICT, ImageFacts(age=3.0, view=view_position(header)))
    assert (judged is None) == (view in ("PA", "AP"))


# labels.csv: any cells, any delimiter, a byte order mark or not, bytes that are not UTF-8
cells = st.one_of(st.text(max_size=8), st.sampled_from(
    ["NORMAL/a.png", "a.png", "b.png", "PNEUMONIA/c.png", "045Y", "006M", "3", "", " ",
     "patient", "file", "PA", "ap", '"', "\r\n"]))
tables = st.lists(st.lists(cells, max_size=6), max_size=8)


def _folder(root: Path) -> list[str]:
    for rel in ("NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/c.png"):
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(b"")
    return ["NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/c.png"]


@FEW
@given(st.one_of(tables, tables.map(lambda t: [["file", "patient", "patient_age", "view"],
                                               *t])),
       st.sampled_from([",", ";", "\t"]), st.booleans(), st.binary(max_size=6))
def test_any_labels_csv_reads_or_is_one_message(table: list[list[str]], delimiter: str,
                                                bom: bool, junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _folder(root)
        text = io.StringIO()
        csv.writer(text, delimiter=delimiter).writerows(table)
        raw = ("\ufeff" if bom else "").encode() + text.getvalue().encode() + junk
        (root / "labels.csv").write_bytes(raw)
        for read in (lambda: read_labels(root), lambda: csv_population(root),
                     lambda: csv_patients(root, files)):
            try:
                read()
            except DataError as e:
                assert str(e) and "Traceback" not in str(e)


@FEW
@given(st.lists(st.tuples(st.sampled_from(["a.png", "b.png", "c.png"]),
                          st.text(ASCII, min_size=1, max_size=6).filter(str.strip),
                          st.one_of(age_strings, st.integers(0, 120).map(str),
                                    st.text(max_size=5))),
                min_size=1, max_size=4))
def test_labels_csv_ages_count_in_every_form_or_name_the_row(
        rows: list[tuple[str, str, str]]) -> None:
    """Every age of a labels.csv is read, as DICOM writes it or in years, or the rows it
    cannot read are named: none is left out silently."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _folder(root)
        with (root / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["file", "patient", "patient_age"], *rows])
        readable = [age_years(a, plain=True) for _, _, a in rows]
        names = [n for n, _, _ in rows]
        try:
            low, high, _ = csv_population(root)
        except DataError as e:
            bad = [i + 2 for i, a in enumerate(readable) if a is None]
            assert bad or len(set(names)) < len(names), str(e)
            for line in bad[:5]:
                assert str(line) in str(e)
            return
        assert None not in readable and len(set(names)) == len(names)
        assert (low, high) == (min(readable), max(readable))


# whole DICOM objects, written and read back as a PACS would send them
adult_ages = st.one_of(
    st.integers(18, 999).map(lambda n: ("PatientAge", f"{n:03d}Y")),
    st.integers(216, 999).map(lambda n: ("PatientAge", f"{n:03d}M")),
    st.integers(940, 999).map(lambda n: ("PatientAge", f"{n:03d}W")),
    st.integers(18, 999).map(lambda n: ("PatientAge", str(n))),  # no unit, no dates
    st.integers(18, 90).map(lambda n: ("dates", n)))


def _dicom(values: dict[str, object], code: str | None) -> io.BytesIO:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "DX"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        if code is not None:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = code, "SCT"
            ds.ViewCodeSequence = [item]
        ds.set_pixel_data(np.arange(64, dtype=np.uint8).reshape(8, 8), "MONOCHROME2", 8)
        out = io.BytesIO()
        mode = pydicom.config.settings.writing_validation_mode
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        try:
            ds.save_as(out, enforce_file_format=True)
        finally:
            pydicom.config.settings.writing_validation_mode = mode
    out.seek(0)
    return out


@FEW
@given(st.text(ASCII, max_size=12), date_texts.filter(str.isascii),
       date_texts.filter(str.isascii), st.text(ASCII, max_size=10),
       st.one_of(st.none(), st.sampled_from(["399173006", "272479007", "1234", ""])))
def test_any_dicom_header_reads_or_is_one_line(age: str, birth: str, study: str, view: str,
                                               code: str | None) -> None:
    header = {"PatientAge": age, "PatientBirthDate": birth, "StudyDate": study,
              "ViewPosition": view}
    try:
        image, facts = read_image(_dicom(header, code), 8, 1)
    except UnreadableImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert image.shape == (8, 8, 1)
    judged = judge(STRICT, facts)
    assert judged is None or judged.reason


@FEW
@given(adult_ages, st.sampled_from(["PA", "AP", "ap", ""]),
       st.sampled_from(["", "20220101", "2022"]))
def test_no_adult_gets_a_probability_under_refuse(age: tuple[str, object], view: str,
                                                  other_birth: str) -> None:
    """An adult's DICOM object, with its age in any form the standard allows (or a bare
    number, or only the dates): under `refuse` the version gives no probability."""
    kind, value = age
    header: dict[str, object] = {"ViewPosition": view, "StudyDate": "20240115"}
    if kind == "dates":
        header["PatientBirthDate"] = f"{2024 - int(value) - 1}0301"  # value years, 10 months
        header["PatientAge"] = "junk"
    else:
        header["PatientAge"] = value
        if other_birth and not str(value).isdigit():  # the header's own age comes first
            header["PatientBirthDate"] = other_birth
    _, facts = read_image(_dicom(header, None), 8, 1)
    judged = judge(STRICT, facts)
    assert judged is not None and judged.refuse and judged.reason.startswith(OUTSIDE)
    assert "aged" in judged.reason and "years" in judged.reason
