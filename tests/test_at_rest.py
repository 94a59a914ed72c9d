"""Patient data at rest: a DICOM object is kept de-identified (what decoding needs, the
patient as a salted hash) and decodes as before; the state folder is its user's alone;
`pneumo-exp cache` lists what is kept and clears it. PHI is checked by searching the bytes
written, not by reading the code."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_copies import DCMTK, VARIANTS, write_dicom
from PIL import Image

from pneumo_exp.data.deidentify import deidentified, kept_name
from pneumo_exp.data.images import decode_image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "test" / "PNEUMONIA"
PHI = {"patient_name": "DOE^JANE", "patient_id": "PX-00042", "accession": "ACC-7731",
       "birth_date": "20190304", "institution": "NORTH GENERAL"}


def _phi_bytes() -> list[bytes]:
    return [v.encode() for v in PHI.values()] + [b"DOE", b"JANE"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in DCMTK])
def test_a_kept_instance_has_no_identity_and_the_same_pixels(tmp_path: Path,
                                                              variant: str) -> None:
    from pydicom import dcmread

    pixels = np.asarray(Image.open(next(SAMPLE.iterdir())).convert("L"))
    original = write_dicom(pixels, tmp_path / "in.dcm", variant, **PHI)
    ds = dcmread(original)
    ds.add_new(0x00091010, "LO", "PRIVATE DOE^JANE")  # a private tag carrying the name
    kept = tmp_path / kept_name(str(ds.SOPInstanceUID))
    deidentified(ds).save_as(kept, enforce_file_format=True)
    data = kept.read_bytes()
    assert not [p for p in _phi_bytes() if p in data]
    assert str(ds.SOPInstanceUID).encode() not in data + kept.name.encode()
    again = dcmread(kept)
    assert again.PatientIdentityRemoved == "YES" and "Annex E" in again.DeidentificationMethod
    assert again.PatientID.startswith("patient-") and again.Modality == "DX"
    # the age in years, computed on arrival from the birth and study dates, neither kept
    assert again.PatientAge == "004Y" and b"20240115" not in data
    assert "PatientBirthDate" not in again and "StudyDate" not in again
    for size in (32, 64):
        assert (decode_image(kept, size, 1) == decode_image(original, size, 1)).all()
    # the same patient, the same key: grouping by patient still works on kept objects
    other = deidentified(dcmread(write_dicom(pixels, tmp_path / "b.dcm", variant, **PHI)))
    assert other.PatientID == again.PatientID


def test_the_state_folder_is_private(tmp_path: Path) -> None:
    from pneumo_exp.fileio import keep_private

    state = tmp_path / ".pneumo"
    (state / "dicomweb").mkdir(parents=True)
    (state / "dicomweb" / "x.dcm").write_bytes(b"x")
    os.chmod(state, 0o755)
    os.chmod(state / "dicomweb", 0o755)
    os.chmod(state / "dicomweb" / "x.dcm", 0o644)  # as an earlier version left it
    before = os.umask(0o022)
    try:
        keep_private(state)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "dicomweb").stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "dicomweb" / "x.dcm").stat().st_mode) == 0o600
        (state / "new").mkdir()
        (state / "new" / "f").write_text("y")  # written after: private too
        assert stat.S_IMODE((state / "new").stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "new" / "f").stat().st_mode) == 0o600
    finally:
        os.umask(before)


def test_cache_lists_and_clears_what_is_kept(workdir: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main

    old = workdir / ".pneumo" / "dicomweb" / "abc" / "old.dcm"
    new = workdir / ".pneumo" / "cache" / "train-1.npz"
    for f in (old, new):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"0" * 1000)
    month = time.time() - 40 * 86400
    os.utime(old, (month, month))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "pacs" in out and "images" in out and "1 files" in out and "tuner" in out
    assert main(["cache", "--clear", "all", "--older-than", "30"]) == 0
    assert "Deleted 1 files" in capsys.readouterr().out
    assert not old.exists() and not old.parent.exists() and new.exists()
    assert main(["cache", "--clear", "images"]) == 0
    assert not new.exists()
    assert main(["cache", "--older-than", "3"]) == 2  # needs --clear
    assert "needs --clear" in capsys.readouterr().err


def test_instances_an_earlier_version_kept_whole_are_deleted(tmp_path: Path) -> None:
    """Before de-identification on arrival, pulled instances were kept whole, named by their
    SOP Instance UID; the next pull from that server deletes them and keeps what is kept
    de-identified (named by a digest)."""
    from pneumo_exp.data.dicomweb import _forget_whole_instances

    folder = tmp_path / "server"
    folder.mkdir()
    whole = folder / "1.2.840.113619.2.55.3.604688119.42.dcm"
    kept = folder / kept_name("1.2.840.113619.2.55.3.604688119.43")
    for f in (whole, kept):
        f.write_bytes(b"DICM")
    _forget_whole_instances(folder)
    assert not whole.exists() and kept.exists()
