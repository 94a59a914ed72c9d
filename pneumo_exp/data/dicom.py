"""DICOM objects as 8-bit images, the way a PACS viewer would show them, and who they show.

A file is DICOM by its content: the 128-byte preamble followed by `DICM`, whatever its
name. Pixels are decoded by pydicom and, for compressed transfer syntaxes (JPEG lossless,
JPEG-LS, JPEG 2000, RLE), its pylibjpeg plugins. The one rule from stored values to 0-255:

1. the modality LUT (Rescale Slope and Intercept, or a Modality LUT Sequence);
2. the first VOI LUT of the object (a VOI LUT Sequence, else Window Center and Width), if it
   has one;
3. the range the object can hold at that point (the stored bits through steps 1-2, as
   pydicom defines it) maps linearly onto 0-255: an 8-bit MONOCHROME2 object is unchanged,
   so its pixels equal those of the same X-ray saved as an 8-bit PNG;
4. MONOCHROME1 (bone dark) is inverted; RGB and YBR objects become RGB (colour is scaled by
   its stored bits);
5. a multi-frame object gives its first frame.

What the header says of the image (`ImageFacts`): the patient id, read for grouping only
(`patient_key` turns it into a salted hash, which is all that is kept); the patient's age
in years (PatientAge, or the years between PatientBirthDate and the study's date, which
are not kept), and the ViewPosition, for the population a version is for
(serving/population.py). No other header value leaves this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np

PREAMBLE = 128
MAGIC = b"DICM"
SALT_ENV = "PNEUMO_EXP_PATIENT_SALT"
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class DicomError(Exception):
    """A DICOM object that gives no image; the message says why, without header values."""


class NotAChestRadiograph(DicomError):
    """An image that is not a chest radiograph by its own header: another modality (CT, MR,
    ultrasound, ...) or another body part. The model has nothing to say about it."""


# DICOM modalities of a projection radiograph: computed, digital, and (retired) general.
RADIOGRAPHY = ("CR", "DX", "RG")
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")  # BodyPartExamined of a chest (any of them in it)
MODALITY_NAMES = {"CT": "a CT image", "MR": "an MR image", "US": "an ultrasound image",
                  "NM": "a nuclear medicine image", "PT": "a PET image",
                  "MG": "a mammogram", "XA": "an angiogram", "RF": "a fluoroscopy image",
                  "OT": "an 'other' (OT) image", "SC": "a secondary capture",
                  "SEG": "a segmentation", "RTDOSE": "an RT dose"}


AGE = re.compile(r"^(\d{1,3})([DWMY])$")  # DICOM's age string: 006M, 045Y
AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}  # per year
STUDY_DATES = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")


@dataclass(frozen=True)
class ImageFacts:
    """What a DICOM header says of whom an image shows and how it was taken."""

    patient: str | None = None  # PatientID: for grouping only, hashed before it is kept
    age: float | None = None  # years
    age_missing: str | None = None  # why there is no age: missing or unreadable
    view: str | None = None  # ViewPosition: PA, AP, LL, ...


def patient_age(ds: object) -> tuple[float | None, str | None]:
    """The patient's age in years from PatientAge, else from the birth and study dates;
    or None and why not."""
    get = getattr(ds, "get", lambda *_: None)
    text = str(get("PatientAge", "") or "").strip().upper()
    if text:
        match = AGE.match(text)
        if match:
            return int(match.group(1)) / AGE_UNITS[match.group(2)], None
        return None, "its PatientAge is unreadable"
    birth = str(get("PatientBirthDate", "") or "").strip()
    study = next((str(get(k)) for k in STUDY_DATES if str(get(k, "") or "").strip()), "")
    if not birth or not study:
        return None, "it has no PatientAge, nor a birth date and a study date"
    try:
        born, seen = (date(int(d[:4]), int(d[4:6]), int(d[6:8])) for d in (birth, study))
    except ValueError:
        return None, "its birth or study date is unreadable"
    if seen < born:
        return None, "its study date is before its birth date"
    return (seen - born).days / 365.25, None


def age_string(years: float) -> str:
    """DICOM's age string of an age in years: months below 2 years, else years."""
    return f"{int(years * 12):03d}M" if years < 2 else f"{min(int(years), 999):03d}Y"


def is_dicom(head: bytes) -> bool:
    """Whether these first bytes of a file are a DICOM preamble."""
    return head[PREAMBLE:PREAMBLE + len(MAGIC)] == MAGIC


def read_dicom(source: str | Path | BinaryIO) -> tuple[np.ndarray, ImageFacts]:
    """(uint8 pixels, H x W or H x W x 3, by the rule above; what the header says)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():  # pydicom warns of every irregular element
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(source)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
            raise DicomError(f"not a readable DICOM file ({type(e).__name__})") from e
        if "PixelData" not in ds:
            kind = getattr(ds.get("SOPClassUID"), "name", "an unknown SOP class")
            raise DicomError(f"a DICOM object without pixel data ({kind})")
        check_chest_radiograph(ds)
        pixels = _decode(ds)
        age, missing = patient_age(ds)
        facts = ImageFacts(str(ds.get("PatientID", "") or "").strip() or None, age, missing,
                           str(ds.get("ViewPosition", "") or "").strip().upper() or None)
    return pixels, facts


def check_chest_radiograph(ds: object) -> None:
    """Refuse an object whose Modality is not a radiograph's, or whose BodyPartExamined is
    not a chest. (Both are often missing: then the pixels decide, through the feature check
    of the model that reads them.)"""
    modality = str(getattr(ds, "get", lambda *_: "")("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPHY:
        what = MODALITY_NAMES.get(modality, f"modality {modality}")
        raise NotAChestRadiograph(f"not a chest radiograph: {what} (Modality {modality}; "
                                  f"a radiograph is {' or '.join(RADIOGRAPHY[:2])})")
    part = str(getattr(ds, "get", lambda *_: "")("BodyPartExamined", "") or "").strip().upper()
    if part and not any(word in part for word in CHEST_WORDS):
        raise NotAChestRadiograph(f"not a chest radiograph: BodyPartExamined is {part}")


def _decode(ds: object) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise DicomError("a DICOM file without a transfer syntax in its file meta")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise DicomError(f"no decoder exists for the transfer syntax {syntax.name} "
                         f"({syntax})") from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise DicomError(f"the transfer syntax {syntax.name} ({syntax}) needs a decoder that "
                         f"is not installed ({missing}); pip install -e '.[cpu]' installs "
                         "pneumo-exp's")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAY + COLOUR:
        raise DicomError(f"photometric interpretation {photometric or 'missing'} is not an "
                         "X-ray's (grayscale or colour)")
    try:
        arr = pixel_array(ds, index=0)  # the first frame; YBR comes back as RGB
    except Exception as e:  # the plugins raise many types for damaged data
        raise DicomError(f"cannot decode the {syntax.name} pixel data "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    if arr.dtype.kind == "f":
        raise DicomError("floating-point pixel data is not an X-ray's")
    if photometric in COLOUR:
        top = 2 ** int(ds.get("BitsStored", 8)) - 1
        return _to_uint8(arr.astype(np.float64), 0.0, float(top))
    low, high = _stored_range(ds)
    values = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, index=0)  # keeps the range below
    out = _to_uint8(np.asarray(values, dtype=np.float64), low, high)
    return 255 - out if photometric == "MONOCHROME1" else out


def _stored_range(ds: object) -> tuple[float, float]:
    """What the stored bits can hold, through the modality LUT (pydicom's own bounds for
    windowing)."""
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 8))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept),
                            high * float(slope) + float(intercept)))
    return low, high


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decoders() -> str:
    """pydicom's version and the plugins that decode each compressed syntax here: part of
    the cache key, since a newly installed plugin turns a skipped file into an image."""
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
    )

    plugins = [f"{uid.keyword}:{','.join(get_decoder(uid).available_plugins)}"
               for uid in (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless)]
    return f"pydicom {pydicom.__version__}; " + "; ".join(plugins)


def patient_key(patient_id: str) -> str:
    """A salted hash of a patient id: the same patient gives the same key on this
    installation (or wherever the salt is shared), and the id cannot be read back."""
    digest = hmac.new(_salt(), patient_id.encode(), hashlib.sha256).hexdigest()
    return f"patient-{digest[:16]}"


def _salt() -> bytes:
    """$PNEUMO_EXP_PATIENT_SALT, else a random salt kept in the state folder (mode 600)."""
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    from pneumo_exp.config import STATE_DIR

    path = STATE_DIR / "patient_salt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".patient_salt.")  # mode 600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # whole, and never over a salt another process wrote
        finally:
            os.remove(tmp)
    return path.read_text().strip().encode()
