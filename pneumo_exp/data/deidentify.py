"""DICOM objects as pneumo-exp keeps them at rest: a new object of only what decoding and the
population check need (KEPT), the patient as a salted hash, and the de-identification
recorded, as DICOM PS3.15 Annex E asks (docs/privacy.md, "De-identification on arrival")."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

from pneumo_exp.data.dicom import age_string, completed_years, patient_age, patient_key

KEPT = (
    # what the object is, and whether it is a chest radiograph
    "SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition", "ImageType",
    # image pixel module
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames",
    "PixelPaddingValue", "PixelData",
    # modality LUT, VOI LUT and presentation
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape",
)
CODE = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")  # of a ViewCodeSequence item
METHOD = "pneumo-exp allow-list (PS3.15 Annex E); PatientID hashed"  # LO: 64 characters


def kept_name(sop_instance_uid: str) -> str:
    """The file name an instance is kept under: a digest of its UID, which is not kept."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32] + ".dcm"


def deidentified(ds: Any) -> Any:
    """A new pydicom Dataset with only KEPT of `ds`, the patient as a salted hash, and the
    de-identification recorded; the transfer syntax (and so the pixel data's encoding) as
    it came."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    out = Dataset()
    for keyword in KEPT:
        if keyword in ds:
            out[keyword] = ds[keyword]
    codes = [item for item in ds.get("ViewCodeSequence") or [] if "CodeValue" in item]
    if codes:
        view = Dataset()
        for keyword in CODE:
            if keyword in codes[0]:
                view[keyword] = codes[0][keyword]
        out.ViewCodeSequence = [view]
    age, rests = patient_age(ds)
    if age is not None:
        with warnings.catch_warnings():  # a bare number stays one (not an AS): no unit known
            warnings.simplefilter("ignore")
            out.PatientAge = (age_string(age) if rests is None
                              else f"{completed_years(age):03d}")
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        out.PatientID = patient_key(patient)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    uid = str(ds.get("SOPInstanceUID", "") or generate_uid())
    out.SOPInstanceUID = generate_uid(entropy_srcs=[uid])  # stable, and not the original
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    out.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out
