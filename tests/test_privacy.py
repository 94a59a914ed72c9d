"""No protected health information leaves a DICOM file: a search, promote, predict, evaluate
and adapt on DICOMs that name their patient, then a byte search of the whole MLflow store
and of everything printed finds none of it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder_dataset
from dicom_copies import write_dicom
from PIL import Image

from pneumo_exp.config import DATASET_SETTINGS

PHI = {"patient_name": "DOE^JANE", "patient_id": "PX-00042", "accession": "ACC-7731",
       "birth_date": "20190304", "institution": "NORTH GENERAL HOSPITAL"}
# (whole values: a short part such as "DOE" turns up by chance in base64-encoded images)
SECRETS = [b"DOE^JANE", b"PX-00042", b"ACC-7731", b"20190304", b"NORTH GENERAL"]


def _dicom_dataset(root: Path, out: Path) -> Path:
    """The folder dataset as DICOM (RLE), every file naming a patient: PX-00042 for the
    first patient, PX-<n> for the others; a structured report and a damaged file too."""

    from pneumo_exp.data.split import patient_id

    patients: dict[str, str] = {}
    for f in sorted(p for p in root.rglob("*.jpeg")):
        pid = patients.setdefault(patient_id(f.name),
                                  "PX-00042" if not patients else f"PX-{len(patients):05d}9")
        pixels = np.asarray(Image.open(f).convert("L"))
        write_dicom(pixels, out / f.relative_to(root).with_suffix(".dcm"), "rle",
                    **{**PHI, "patient_id": pid})
    report = write_dicom(np.zeros((8, 8), np.uint8), out / "train" / "NORMAL" / "sr.dcm", **PHI)
    from pydicom import dcmread
    ds = dcmread(report)
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.save_as(report, enforce_file_format=True)
    damaged = out / "train" / "PNEUMONIA" / "damaged.dcm"
    damaged.write_bytes(next((out / "train" / "PNEUMONIA").iterdir()).read_bytes()[:600])
    shutil.copy(root / DATASET_SETTINGS, out)  # the settings that fit it
    return out


@pytest.mark.slow
def test_no_phi_in_the_store_or_on_the_console(workdir: Path, capsys: pytest.CaptureFixture,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from pneumo_exp.cli import main

    caplog.set_level(logging.INFO)
    data = _dicom_dataset(make_folder_dataset(workdir / "jpeg", {"train": (24, 36),
                                                                 "val": (16, 16),
                                                                 "test": (6, 6)}, size=40),
                          workdir / "dicom")  # validation of 32: adapt needs it
    assert main(["search", "aug_cnn", "--data", str(data), "--max-trials", "1", "--epochs", "1",
                 "--image-size", "32", "--tuner", "random", "--set", "space.conv_blocks=2",
                 "--set", "tracking.gradcam_images=2"]) == 0
    assert main(["promote", "aug_cnn", "--model-name", "private", "--any-trial"]) == 0  # 1 epoch
    assert main(["predict", "--model", "models:/private/1", str(data / "test")]) == 0
    assert main(["evaluate", "--model", "models:/private/1", "--data", str(data),
                 "--out", str(workdir / "reports")]) == 0
    assert main(["adapt", "--model", "models:/private/1", "--data", str(data / "train"),
                 "--site", "north"]) == 0
    printed = capsys.readouterr()
    console = (printed.out + printed.err + caplog.text).encode()
    assert b"sr.dcm" in console or b"damaged.dcm" in console  # the skipped files are listed
    store = [p for p in (workdir / "mlruns").rglob("*") if p.is_file()]
    assert len(store) > 50  # runs, plots, models, the database
    found = {(str(p.relative_to(workdir)), s.decode()) for p in store
             for s in SECRETS if s in p.read_bytes()}
    found |= {("console", s.decode()) for s in SECRETS if s in console}
    assert not found, f"PHI found: {sorted(found)}"
    reports = b"".join(p.read_bytes() for p in (workdir / "reports").iterdir())
    assert not [s for s in SECRETS if s in reports]
