"""DICOM copies of a JPEG/PNG dataset folder, as a PACS would hold the same X-rays.

    .venv/bin/python bench/dicom_copies.py SRC DEST [--variant mono2|mono1|rescaled12|
        windowed12|rle|jpeg-lossless|jpeg-ls|j2k] [--patient-name DOE^JANE] [--patient-id ID]

Every image under SRC becomes DEST/<same path>.dcm, a Digital X-Ray object (8-bit grayscale
pixels of the file, the patient id taken from the file name unless --patient-id is given)
in one of these encodings:

- mono2: 8 bits, MONOCHROME2, uncompressed (the PNG's pixels as they are);
- mono1: 8 bits, MONOCHROME1 (stored inverted: bone dark);
- rescaled12: 12 bits stored in 16, value x 16, Rescale Slope 1/16;
- windowed12: as rescaled12 without the rescale, and a window over the 12-bit range;
- rle, j2k: mono2 RLE Lossless / JPEG 2000 Lossless encoded (pydicom's encoders);
- jpeg-lossless: mono2 JPEG Lossless SV1 encoded (DCMTK's dcmcjpeg, Debian package dcmtk);
- jpeg-ls: mono2 JPEG-LS Lossless encoded (DCMTK's dcmcjpls).

tests/test_dicom.py builds its test files with `write_dicom`; bench/decode.py times reading
them.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("mono2", "mono1", "rescaled12", "windowed12", "rle", "jpeg-lossless", "jpeg-ls",
            "j2k")
DCMTK = {"jpeg-lossless": ["dcmcjpeg", "+e1"],  # lossless, first-order prediction (SV1)
         "jpeg-ls": ["dcmcjpls", "+el"]}  # JPEG-LS lossless
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(pixels: np.ndarray, path: Path, variant: str = "mono2", *,
                patient_id: str = "", patient_name: str = "", study_uid: str | None = None,
                series_uid: str | None = None, accession: str = "", birth_date: str = "",
                institution: str = "") -> Path:
    """One 8-bit grayscale image (H, W) as a DICOM file in `variant` (see above)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    pixels = np.asarray(pixels, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DIGITAL_XRAY
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.AccessionNumber = birth_date, accession
    ds.InstitutionName = institution
    ds.StudyDate = ds.SeriesDate = datetime.date(2024, 1, 15).strftime("%Y%m%d")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    if variant == "mono1":
        ds.set_pixel_data(255 - pixels, "MONOCHROME1", 8)
    elif variant in ("rescaled12", "windowed12"):
        ds.set_pixel_data(pixels.astype(np.uint16) * 16, "MONOCHROME2", 12)
        if variant == "rescaled12":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.0625", "0", "US"
        else:
            ds.WindowCenter, ds.WindowWidth = "2047.5", "4096"
    else:
        ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    if variant == "rle":
        ds.compress(RLELossless)
    elif variant == "j2k":
        ds.compress(JPEG2000Lossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant in DCMTK:
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain.dcm"
            ds.save_as(plain, enforce_file_format=True)
            _dcmtk(DCMTK[variant], plain, path)
        return path
    ds.save_as(path, enforce_file_format=True)
    return path


def _dcmtk(command: list[str], src: Path, dest: Path) -> None:
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"JPEG Lossless and JPEG-LS copies need {command[0]} (Debian "
                           "package dcmtk)")
    subprocess.run([*command, str(src), str(dest)], check=True, capture_output=True)


def copy_folder(src: Path, dest: Path, variant: str, patient_id: str | None = None,
                patient_name: str = "") -> int:
    """Every image under `src` as `dest/<same path>.dcm`; returns how many."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pneumo_exp.data.split import patient_id as id_from_name

    count = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        try:
            with Image.open(f) as im:
                pixels = np.asarray(im.convert("L"))
        except OSError:
            continue
        out = dest / f.relative_to(src).with_suffix(".dcm")
        write_dicom(pixels, out, variant, patient_id=patient_id or id_from_name(f.name),
                    patient_name=patient_name)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--variant", default="mono2", choices=VARIANTS)
    parser.add_argument("--patient-id", help="one PatientID for every file (default: the "
                        "patient in each file name)")
    parser.add_argument("--patient-name", default="")
    args = parser.parse_args()
    n = copy_folder(args.src, args.dest, args.variant, args.patient_id, args.patient_name)
    print(f"{n} DICOM files ({args.variant}) in {args.dest}")


if __name__ == "__main__":
    main()
