"""A PACS as a data source, over DICOMweb: QIDO-RS finds the instances of a study, a series or
a query (modality, study date), WADO-RS retrieves them as stored, and each is kept
de-identified under .pneumo/dicomweb/, named by a digest of its UID, so a second pull reads
the disk (docs/privacy.md). Credentials come from USER_ENV and PASSWORD_ENV (HTTP basic
authentication), never the command line; every failure is one DataError."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo_exp.config import CLASS_NAMES, PACS_DIR
from pneumo_exp.data.deidentify import deidentified, kept_name
from pneumo_exp.data.dicom import without_pixels
from pneumo_exp.errors import DataError
from pneumo_exp.fileio import atomic_path, touch

log = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV = "PNEUMO_EXP_DICOMWEB_USERNAME", "PNEUMO_EXP_DICOMWEB_PASSWORD"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STUDY, SERIES, INSTANCE = "0020000D", "0020000E", "00080018"  # QIDO-RS JSON tags
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class PacsQuery:
    """What to pull: studies, a series, or a query by modality and study date."""

    url: str
    studies: tuple[str, ...] = ()
    series: str | None = None
    modalities: tuple[str, ...] = ()
    study_date: str | None = None  # YYYYMMDD or YYYYMMDD-YYYYMMDD

    def __post_init__(self) -> None:
        for uid in (*self.studies, *([self.series] if self.series else [])):
            if not UID.match(uid):
                raise DataError(f"'{uid}' is not a DICOM UID (digits and dots).")
        if self.study_date and not re.match(r"^\d{8}(-\d{8})?$", self.study_date):
            raise DataError(f"study date must be YYYYMMDD or YYYYMMDD-YYYYMMDD; got "
                            f"'{self.study_date}'.")
        if self.series and len(self.studies) != 1:
            raise DataError("a series needs its study: give one study UID with it.")

    @property
    def where(self) -> str:
        """The server, without any credentials in its URL."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class Pulled:
    """Image instances on disk (de-identified), each with its study and SOP Instance UID;
    the instances that hold no image (a structured report, a presentation state) with the
    reason; what came from the cache."""

    files: list[Path] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    not_images: list[tuple[str, str]] = field(default_factory=list)  # (SOP UID, reason)
    from_cache: int = 0


def comma_list(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def pull(query: PacsQuery, cache_dir: Path | None = None) -> Pulled:
    """Find the query's instances and bring each to disk (once); in QIDO-RS order."""
    import pydicom

    client = _client(query)
    found = _search(client, query)
    if not found:
        raise DataError(f"the PACS at {query.where} has no instance matching "
                        f"{_describe(query)}.")
    folder = (cache_dir or PACS_DIR) / hashlib.sha256(query.where.encode()).hexdigest()[:12]
    _forget_whole_instances(folder)
    pulled, last_report, size = Pulled(), time.time(), 0
    for i, (study, series, instance) in enumerate(found, 1):
        path = folder / kept_name(instance)
        if path.is_file():
            pulled.from_cache += 1
            touch(path)
        else:
            dataset = _call(query, lambda s=study, r=series, o=instance: client.retrieve_instance(
                s, r, o, media_types=(("application/dicom", "*"),)))  # as stored
            with atomic_path(path) as tmp:
                deidentified(dataset).save_as(tmp, enforce_file_format=True)
        size += path.stat().st_size
        reason = without_pixels(pydicom.dcmread(path, specific_tags=["PixelData", "SOPClassUID"]))
        if reason:
            pulled.not_images.append((instance, reason))
        else:
            pulled.files.append(path)
            pulled.studies.append(study)
            pulled.instances.append(instance)
        if time.time() - last_report > PROGRESS_SECONDS or i == len(found):
            log.info("Pulled %d of %d instances (%.1f MB; %d from the cache) from %s.", i,
                     len(found), size / 1e6, pulled.from_cache, query.where)
            last_report = time.time()
    if not pulled.files:
        raise DataError(f"none of the {len(found)} instances pulled from {query.where} is an "
                        f"image: {pulled.not_images[0][1]}.")
    if pulled.not_images:
        log.info("Left out %d instances that hold no image (%s).", len(pulled.not_images),
                 pulled.not_images[0][1])
    return pulled


def read_labels(path: Path) -> dict[str, int]:
    """StudyInstanceUID -> 0 (NORMAL) or 1 (PNEUMONIA), from a CSV of StudyInstanceUID,label
    (a header row is allowed; labels NORMAL/PNEUMONIA or 0/1)."""
    if not path.is_file():
        raise DataError(f"labels file not found: {path}. Give LABELS=file.csv with "
                        "StudyInstanceUID,label rows.")
    labels: dict[str, int] = {}
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            uid = row[0].strip() if row else ""
            if not row or (n == 1 and not UID.match(uid)):
                continue  # blank, or the header
            if len(row) < 2 or not UID.match(uid):
                raise DataError(f"{path} line {n}: expected StudyInstanceUID,label.")
            value = row[1].strip().upper()
            if value not in (*CLASS_NAMES, "0", "1"):
                raise DataError(f"{path} line {n}: the label must be NORMAL, PNEUMONIA, 0 or "
                                f"1; got '{row[1].strip()}'.")
            labels[uid] = CLASS_NAMES.index(value) if value in CLASS_NAMES else int(value)
    if not labels:
        raise DataError(f"{path} has no StudyInstanceUID,label rows.")
    return labels


def _forget_whole_instances(folder: Path) -> None:
    """Instances an earlier version kept whole (named by their SOP Instance UID, with every
    header): deleted, so no patient identity stays at rest. They are pulled again,
    de-identified, when asked for."""
    if not folder.is_dir():
        return
    whole = [f for f in folder.glob("*.dcm") if UID.match(f.stem)]
    for f in whole:
        f.unlink(missing_ok=True)
    if whole:
        log.info("Deleted %d PACS instances an earlier version kept whole in %s; they are "
                 "pulled again, de-identified, when needed.", len(whole), folder)


def _client(query: PacsQuery) -> Any:
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    user = os.environ.get(USER_ENV)
    session = (create_session_from_user_pass(user, os.environ.get(PASSWORD_ENV, "")) if user
               else create_session())
    return DICOMwebClient(url=query.url, session=session)


def _search(client: Any, query: PacsQuery) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for study in query.studies or (None,):
        for modality in query.modalities or (None,):
            these = {k: v for k, v in (("StudyDate", query.study_date), ("Modality", modality))
                     if v}
            results = _call(query, lambda s=study, f=these: client.search_for_instances(
                study_instance_uid=s, series_instance_uid=query.series, search_filters=f,
                get_remaining=True))
            found += [(r[STUDY]["Value"][0], r[SERIES]["Value"][0], r[INSTANCE]["Value"][0])
                      for r in results if all(t in r for t in (STUDY, SERIES, INSTANCE))]
    unique = list(dict.fromkeys(found))
    if not all(UID.match(uid) for t in unique for uid in t):
        raise DataError(f"the PACS at {query.where} answered with malformed UIDs.")
    return unique


def _call(query: PacsQuery, request: Any) -> Any:
    """One DICOMweb request, its failures as one message."""
    import requests

    try:
        return request()
    except requests.exceptions.ConnectionError as e:
        raise DataError(f"cannot reach the PACS at {query.where}: is it running, and is the "
                        "URL right (host, port)?") from e
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise DataError(f"the PACS at {query.where} refused the credentials (HTTP "
                            f"{status}): set {USER_ENV} and {PASSWORD_ENV}.") from e
        if status == 404:
            raise DataError(f"{query.where} answered 404: not a DICOMweb root (e.g. "
                            "http://pacs:8042/dicom-web), or the study or series is not "
                            "there.") from e
        raise DataError(f"the PACS at {query.where} answered HTTP {status}.") from e
    except requests.exceptions.RequestException as e:
        raise DataError(f"the PACS at {query.where} failed: {type(e).__name__}.") from e


def _describe(query: PacsQuery) -> str:
    parts = [f"study {', '.join(query.studies)}" if query.studies else "",
             f"series {query.series}" if query.series else "",
             f"modality {', '.join(query.modalities)}" if query.modalities else "",
             f"study date {query.study_date}" if query.study_date else ""]
    return "; ".join(p for p in parts if p) or "the query"

