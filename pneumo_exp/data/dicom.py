"""DICOM objects as 8-bit images, the way a PACS viewer would show them, and who they show.
A file is DICOM by its content (the 128-byte preamble, then `DICM`), whatever its name;
pydicom and its plugins decode the pixels (`decoders()` names those installed). The rule
from stored values to 0-255: the modality LUT, then the object's first VOI LUT (a sequence,
else Window Center and Width) if it has one; the range the object can hold at that point
(pydicom's) maps linearly onto 0-255, so an 8-bit MONOCHROME2 object is unchanged;
MONOCHROME1, or a Presentation LUT Shape INVERSE, is inverted once (PS3.3 C.7.6.1.1 pairs
them); RGB and YBR become RGB scaled by their stored bits; a multi-frame object gives its
first frame (docs/sites.md, "DICOM objects and PACS studies"). The header gives `ImageFacts`
(the patient id, hashed before it is kept; the age and view: docs/sites.md, "Whom a version
is for"); no other header value leaves this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np

PREAMBLE = 128
MAGIC = b"DICM"
SALT_ENV = "PNEUMO_EXP_PATIENT_SALT"
GRAY = ("MONOCHROME1", "MONOCHROME2")
# pydicom's plugins in the order they are tried: pydicom's own order before GDCM, so that
# an object decodes as it always did where pylibjpeg-libjpeg is installed (the `libjpeg`
# extra); GDCM last, for JPEG Lossless and JPEG-LS where it is not
PLUGINS = ("pylibjpeg", "pillow", "pydicom", "gdcm")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class UnreadableImageError(Exception):
    """A file that is no image that can be decoded (not an image, corrupt, truncated, empty, a
    DICOM object without pixels or whose compression no installed plugin reads); the message
    says why, without header values."""

    label = "unreadable"  # the label of an input that gives no image


class RefusedImageError(UnreadableImageError):
    """An image that is not a chest radiograph by its own header: another modality (CT, MR,
    ultrasound, ...) or another body part. The model has nothing to say about it."""

    label = "not a chest radiograph"


# DICOM modalities of a projection radiograph: computed, digital, and (retired) general.
RADIOGRAPHY = ("CR", "DX", "RG")
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")  # BodyPartExamined of a chest (any of them in it)
MODALITY_NAMES = {"CT": "a CT image", "MR": "an MR image", "US": "an ultrasound image",
                  "NM": "a nuclear medicine image", "PT": "a PET image",
                  "MG": "a mammogram", "XA": "an angiogram", "RF": "a fluoroscopy image",
                  "OT": "an 'other' (OT) image", "SC": "a secondary capture",
                  "SEG": "a segmentation", "RTDOSE": "an RT dose"}


AGE = re.compile(r"^([0-9]{1,3})([DWMY])$")  # DICOM's age string (AS): 006M, 045Y
BARE = re.compile(r"^[0-9]{1,3}$")  # a PatientAge without its unit: 45, 045
PLAIN = re.compile(r"^[0-9]{1,3}(\.[0-9]+)?$")  # labels.csv's plain years: 45, 4.5
MONTHS_PER = {"D": 12 / 365.25, "W": 12 * 7 / 365.25, "M": 1.0, "Y": 12.0}  # months a unit
DATE = re.compile(r"^([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})$")  # DA, and ACR-NEMA's 2019.03.04
STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")  # PatientAge is
# the age at the study; the series, acquisition and content dates are the study's day or later
NO_UNIT = "its PatientAge has no unit (D, W, M or Y): read as years"
# ViewCodeSequence's codes (CID 4010 "DX View": SNOMED CT, and the SNOMED-RT codes older
# objects carry) as ViewPosition's terms; frontal says neither AP nor PA
VIEW_CODES: dict[str, str | None] = {
    "272479007": "PA", "399066004": "PA", "R-10214": "PA",
    "399348003": "AP", "R-10206": "AP",
    "399198007": "RL", "R-10232": "RL",
    "399173006": "LL", "R-10236": "LL",
    "399067008": "LATERAL", "R-102CD": "LATERAL",
    "399033003": None,
}


@dataclass(frozen=True)
class ImageFacts:
    """What a DICOM header says of whom an image shows and how it was taken."""

    patient: str | None = None  # PatientID: for grouping only, hashed before it is kept
    age: float | None = None  # completed months / 12 (age_years); judged in completed years
    age_missing: str | None = None  # why there is no age, or what the age rests on (NO_UNIT)
    view: str | None = None  # ViewPosition (PA, AP, LL, ...), else ViewCodeSequence's


def _text(obj: object, keyword: str) -> str:
    """A header value as stripped text, "" if absent (a pydicom Dataset, or a mapping in tests)."""
    get = getattr(obj, "get", None)
    value = get(keyword) if callable(get) else None
    return str(value if value is not None else "").strip()


def completed_years(age: float) -> int:
    """The completed years of an age in years: 5 for 5 years 11 months."""
    return math.floor(age + 1e-9)


def age_years(text: str, plain: bool = False) -> float | None:
    """An age string's completed months over 12 (`011M` -> 11/12, `005Y` -> 5, `003W` -> 0);
    with `plain`, a plain number is years too (labels.csv's `45` or `4.5`). None if it is
    neither."""
    text = text.strip().upper()
    match = AGE.match(text)
    if match:
        return math.floor(int(match.group(1)) * MONTHS_PER[match.group(2)] + 1e-9) / 12
    if plain and PLAIN.match(text):
        return math.floor(float(text) * 12 + 1e-9) / 12
    return None


def _date(text: str) -> date | None:
    match = DATE.match(text)
    with contextlib.suppress(ValueError):  # not a day of the calendar
        return date(*(int(g) for g in match.groups())) if match else None
    return None


def patient_age(ds: object) -> tuple[float | None, str | None]:
    """The patient's age (completed months / 12) from PatientAge, else from the birth and
    study dates, else a bare PatientAge read as years; or None and why not. A reason beside
    an age says what it rests on."""
    text = _text(ds, "PatientAge")
    age = age_years(text)
    if age is not None:
        return age, None
    born = _date(_text(ds, "PatientBirthDate"))
    seen = next((d for d in (_date(_text(ds, k)) for k in STUDY_DATES) if d), None)
    if born and seen and seen >= born:  # completed months: 11 the day before a first birthday
        months = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
        return months / 12, None
    if BARE.match(text):
        return float(int(text)), NO_UNIT
    why = "its PatientAge is unreadable" if text else "it has no PatientAge"
    if born and seen:
        return None, f"{why}, and its study date is before its birth date"
    return None, f"{why}, and no readable birth and study dates"


def age_string(years: float) -> str:
    """DICOM's age string of an age in years: completed months below 2 years, else years."""
    months = math.floor(years * 12 + 1e-9)
    return f"{months:03d}M" if months < 24 else f"{min(completed_years(years), 999):03d}Y"


def age_words(years: float) -> str:
    """An age as a message says it: `11 months`, `5 years` (completed, as DICOM counts)."""
    months = math.floor(years * 12 + 1e-9)
    if months < 24:
        return f"{months} month{'s' if months != 1 else ''}"
    return f"{completed_years(years)} years"


def view_position(ds: object) -> str | None:
    """ViewPosition (upper case), else the view ViewCodeSequence codes, else None."""
    position = _text(ds, "ViewPosition").upper()
    if position:
        return position
    try:
        item = next(iter(ds.get("ViewCodeSequence") or ()), None)
    except TypeError:
        return None
    code = _text(item, "CodeValue").upper()
    if code in VIEW_CODES:
        return VIEW_CODES[code]
    return _text(item, "CodeMeaning").upper()[:64] or None


def is_dicom(source: str | Path | BinaryIO) -> bool:
    """Whether a file starts with a DICOM preamble (a file object is read where it stands
    and put back there)."""
    try:
        with contextlib.nullcontext(source) if hasattr(source, "read") else open(source, "rb") as f:
            start = f.tell()
            head = f.read(PREAMBLE + len(MAGIC))
            f.seek(start)
    except OSError:
        return False  # Pillow names the problem
    return head[PREAMBLE:] == MAGIC


def read_dicom(source: str | Path | BinaryIO) -> tuple[np.ndarray, ImageFacts]:
    """(uint8 pixels, H x W or H x W x 3, by the rule above; what the header says)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise UnreadableImageError(f"not a readable DICOM file ({type(e).__name__})") from e
    if reason := without_pixels(ds):
        raise UnreadableImageError(reason)
    check_chest_radiograph(ds)
    pixels = _decode(ds)
    age, missing = patient_age(ds)
    facts = ImageFacts(_text(ds, "PatientID") or None, age, missing, view_position(ds))
    return pixels, facts


def without_pixels(ds: object) -> str | None:
    """Why an object holds no image (no pixel data: a structured report, a presentation
    state), or None."""
    if "PixelData" in ds:
        return None
    kind = getattr(ds.get("SOPClassUID"), "name", "an unknown SOP class")
    return f"a DICOM object without pixel data ({kind})"


def check_chest_radiograph(ds: object) -> None:
    """Refuse an object whose Modality is not a radiograph's, or whose BodyPartExamined is
    not a chest. (Both are often missing: then the pixels decide, through the feature check
    of the model that reads them.)"""
    modality = _text(ds, "Modality").upper()
    if modality and modality not in RADIOGRAPHY:
        what = MODALITY_NAMES.get(modality, f"modality {modality}")
        raise RefusedImageError(f"not a chest radiograph: {what} (Modality {modality}; "
                                f"a radiograph is {' or '.join(RADIOGRAPHY[:2])})")
    part = _text(ds, "BodyPartExamined").upper()
    if part and not any(word in part for word in CHEST_WORDS):
        raise RefusedImageError(f"not a chest radiograph: BodyPartExamined is {part}")


def _decode(ds: object) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise UnreadableImageError("a DICOM file without a transfer syntax in its file meta")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise UnreadableImageError(f"no decoder exists for the transfer syntax {syntax.name} "
                                   f"({syntax})") from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise UnreadableImageError(f"the transfer syntax {syntax.name} ({syntax}) needs a "
                                   f"decoder that is not installed ({missing}); pip install -e "
                                   "'.[cpu]' installs pneumo-exp's (GDCM, openjpeg, RLE)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAY + COLOUR:
        raise UnreadableImageError(f"photometric interpretation {photometric or 'missing'} is "
                                   "not an X-ray's (grayscale or colour)")
    plugins = sorted(decoder.available_plugins, key=lambda p: (
        PLUGINS.index(p) if p in PLUGINS else len(PLUGINS))) or [""]
    errors = []
    for plugin in plugins:
        try:
            arr = pixel_array(ds, index=0, decoding_plugin=plugin)  # the first frame; YBR
            break  # comes back as RGB
        except Exception as e:  # the plugins raise many types for damaged data
            # the reason in one line: pydicom's names its plugin on a line of its own before it
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            errors.append((lines[-1] if lines else type(e).__name__)[:160])
    else:
        hint = (f"; not installed: {'; '.join(decoder.missing_dependencies)} (pip install "
                "'pneumo-exp[libjpeg]' adds libjpeg, GPLv3)" if decoder.missing_dependencies
                else "")
        raise UnreadableImageError(f"cannot decode the {syntax.name} pixel data "
                                   f"({'; '.join(errors)}){hint}")
    if arr.dtype.kind == "f":
        raise UnreadableImageError("floating-point pixel data is not an X-ray's")
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
    inverse = _text(ds, "PresentationLUTShape").upper() == "INVERSE"
    return 255 - out if photometric == "MONOCHROME1" or inverse else out


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
    from pydicom import uid
    from pydicom.pixels import get_decoder

    plugins = [f"{s.keyword}:{','.join(get_decoder(s).available_plugins)}" for s in (
        uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless)]
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
