"""Where a command's images come from, decided in one place: files and folders, a site's
folder, a labelled folder, or studies pulled from a PACS with their labels. The commands
(predict, evaluate, adapt, site-check) call these and read the files they name; a new
source of images is a function here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.dicomweb import PacsQuery, pull, read_labels
from pneumo_exp.data.images import image_files
from pneumo_exp.errors import DataError


@dataclass(frozen=True)
class Images:
    """Image files to read, what to call each of them, the folder they lie under, and
    where they came from, in words."""

    files: list[Path]
    names: list[str]
    root: Path
    source: str


@dataclass(frozen=True)
class LabelledSet:
    """Files with their labels, where they came from, and the folder they lie under."""

    files: list[Path]
    labels: np.ndarray
    root: Path  # the files lie under it (their fingerprint is relative to it)
    source: str  # a folder, or a PACS and its query, for the run and the report
    name: str  # short, for the run's name


def image_inputs(paths: list[str], pacs: PacsQuery | None = None) -> Images:
    """The image files under `paths`, or pulled from `pacs` (named by their SOP Instance
    UIDs: the files kept are de-identified and named by digests)."""
    if pacs is None:
        files = image_files(paths)
        return Images(files, [str(f) for f in files], Path(paths[0]), " ".join(map(str, paths)))
    pulled = pull(pacs)
    return Images(pulled.files, pulled.instances, pulled.files[0].parent,
                  f"{pacs.where} ({len(pulled.files)} instances)")


def site_images(folder: str | None, pacs: PacsQuery | None = None) -> Images:
    """A site's unlabeled images: every image under `folder` (any layout below it; labels
    are not read), or pulled from `pacs`."""
    if pacs is None and (folder is None or not Path(folder).is_dir()):
        raise DataError(f"{folder} is not a folder of images: give DATA=folder (any layout "
                        "below it; labels are not read), or DICOMWEB=.")
    return image_inputs([folder] if folder else [], pacs)


def labelled_folder(folder: Path) -> LabelledSet:
    """FOLDER/{NORMAL,PNEUMONIA}/ or FOLDER/test/{NORMAL,PNEUMONIA}/."""
    root = folder if (folder / CLASS_NAMES[0]).is_dir() else folder / "test"
    files, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        class_dir = root / name
        if not class_dir.is_dir():
            raise DataError(f"{class_dir} is missing: give a folder with NORMAL/ and PNEUMONIA/ "
                            "(or a dataset root with test/NORMAL and test/PNEUMONIA).")
        found = image_files([class_dir])
        files += found
        labels += [label] * len(found)
    return LabelledSet(files, np.array(labels), root, str(root), folder.name)


def labelled_pacs(pacs: PacsQuery, labels_csv: Path) -> LabelledSet:
    """The studies of `pacs` labelled in `labels_csv` (StudyInstanceUID,label); every
    labelled study when the query names none."""
    labels = read_labels(labels_csv)
    if not pacs.studies:
        pacs = replace(pacs, studies=tuple(sorted(labels)))
    pulled = pull(pacs)
    read = [(f, labels[s]) for f, s in zip(pulled.files, pulled.studies, strict=True)
            if s in labels]  # the pulled instances of the labelled studies
    if not read:
        raise DataError("none of the pulled studies is in the labels file.")
    files = [f for f, _ in read]
    return LabelledSet(files, np.array([y for _, y in read]), files[0].parent,
                       f"{pacs.where}, {len(set(pulled.studies))} studies labelled in "
                       f"{labels_csv}", "pacs")
