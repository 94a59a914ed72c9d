"""Dataset sources (the Kaggle folder layout, MedMNIST's pneumoniamnist*.npz), and the cache
that decodes once: `load_split` keeps a split as a uint8 .npz keyed by its entries (names,
sizes, modification times), the preprocessing and the DICOM decoders installed (a new
plugin reads files that were skipped); patients as grouping keys (PatientIDs hashed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumo_exp.config import CACHE_DIR, CLASS_NAMES
from pneumo_exp.data.dicom import decoders, patient_key
from pneumo_exp.data.images import decode_many, resize
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.site_folder import LABELS_CSV, csv_patients, is_site_folder, read_labels
from pneumo_exp.data.split import patient_id
from pneumo_exp.errors import DataError
from pneumo_exp.fileio import atomic_path, touch

log = logging.getLogger(__name__)

LAYOUT = "ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|png|dcm"
Skipped = tuple[str, str]  # (file relative to the root, reason)
CACHE_FORMAT = 3  # bump when decoding changes, to invalidate old caches (3: no JPEG draft)


@dataclass(frozen=True)
class SplitData:
    data: LabeledImages
    skipped: list[Skipped]
    fingerprint: str  # the cache key: the files' names, sizes, modification times; preprocessing
    from_cache: bool
    seconds: float


def open_source(root: str | Path) -> FolderSource | NpzSource:
    """A FolderSource for a directory, an NpzSource for a .npz file."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset not found: {path}. Give DATA=path/to/chest_xray (layout "
                        f"{LAYOUT}) or a pneumoniamnist .npz file, or leave DATA out to use "
                        "the bundled sample.")
    if path.is_file() and path.suffix == ".npz":
        return NpzSource(path)
    if not path.is_dir():
        raise DataError(f"{path} is neither a dataset folder ({LAYOUT}) nor a .npz file.")
    return FolderSource(path)


def load_split(source: FolderSource | NpzSource, split: str, image_size: int, channels: int,
               cache_dir: Path | None = None) -> SplitData:
    """Decoded split from the cache when its fingerprint matches, else decoded and cached."""
    start = time.perf_counter()
    key = fingerprint(source.entries(split), {"size": image_size, "channels": channels,
                                              "decoders": decoders()})
    path = (cache_dir or CACHE_DIR) / f"{split}-{key}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        with np.load(path, allow_pickle=False) as z:  # absent or unreadable: decoded again
            data = LabeledImages(z["images"], z["labels"], z["names"], z["groups"])
            skipped = list(zip(z["skipped_names"].tolist(), z["skipped_reasons"].tolist(),
                               strict=True))
        touch(path)
        return SplitData(data, skipped, key, True, time.perf_counter() - start)
    data, skipped = source.decode(split, image_size, channels)
    for label, name in enumerate(CLASS_NAMES):
        if not np.any(data.labels == label):
            raise DataError(f"{source.root}: the {split} split has no readable {name} image "
                            f"({len(skipped)} files skipped). Every split needs both classes.")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=data.images, labels=data.labels, names=data.names.astype(str),
                 groups=data.groups.astype(str),
                 skipped_names=np.array([s[0] for s in skipped], dtype=str),
                 skipped_reasons=np.array([s[1] for s in skipped], dtype=str))
    return SplitData(data, skipped, key, False, time.perf_counter() - start)


def fingerprint(entries: Iterable[Any], settings: dict[str, Any]) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, "settings": settings, "entries": list(entries)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class FolderSource:
    """ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/ of image files of any size and mode, DICOM
    objects among them; or a site's labelled folder, ROOT/{NORMAL,PNEUMONIA}/ and perhaps
    ROOT/labels.csv (site_folder.py), whose images are all train."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.site = is_site_folder(root)
        if not self.site and not (root / "train").is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())[:6]
            hint = f" (it holds: {', '.join(found)})" if found else " (it is empty)"
            classes = [c for c in CLASS_NAMES if (root / c).is_dir()]
            site = (f"; a site's folder needs both classes, and this one holds {classes[0]}/ "
                    f"but no {(set(CLASS_NAMES) - set(classes)).pop()}/"
                    if len(classes) == 1 else "")
            raise DataError(f"{root} has no train/ folder{hint}. Expected the layout {LAYOUT} "
                            "(or, for a site's search, ROOT/{NORMAL,PNEUMONIA}/" + site + "); "
                            "point DATA at the folder that contains train/.")

    def has_split(self, split: str) -> bool:
        return split == "train" if self.site else (self.root / split).is_dir()

    def _files(self, split: str) -> list[tuple[str, int, os.stat_result]]:
        split_dir = self.root if self.site and split == "train" else self.root / split
        if not self.has_split(split):
            raise DataError(f"{split_dir} is missing. Expected the layout {LAYOUT}.")
        files = []
        for label, name in enumerate(CLASS_NAMES):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                raise DataError(f"{class_dir} is missing: every split needs the class folders "
                                f"{' and '.join(CLASS_NAMES)} ({LAYOUT}).")
            prefix = f"{name}/" if self.site else f"{split}/{name}/"
            with os.scandir(class_dir) as it:  # one stat per file: warm loads stay fast
                found = sorted((f"{prefix}{e.name}", label, e.stat())
                               for e in it if e.is_file())
            if not found:
                raise DataError(f"{class_dir} is empty: " + (
                    "a site's search needs labelled images of both classes, to learn and to "
                    "validate on each" if self.site else
                    "every split needs images of both classes") + ".")
            files.extend(found)
        return files

    def entries(self, split: str) -> list[tuple[str, int, int]]:
        found = [(rel, st.st_size, st.st_mtime_ns) for rel, _, st in self._files(split)]
        labels = self.root / LABELS_CSV
        if self.site and labels.is_file():  # its patients are part of the data
            found.append((LABELS_CSV, labels.stat().st_size, labels.stat().st_mtime_ns))
        return found

    def decode(self, split: str, image_size: int,
               channels: int) -> tuple[LabeledImages, list[Skipped]]:
        files = self._files(split)
        labelled = self.site and read_labels(self.root) is not None  # its rows, checked first
        log.info("Decoding %d files of %s at %dx%dx%d (once; later runs read the cache)...",
                 len(files), self.root if self.site else self.root / split, image_size,
                 image_size, channels)

        rels = [rel for rel, _, _ in files]
        decoded = decode_many([self.root / rel for rel in rels], [(image_size, channels)])
        names = [rels[i] for i in decoded.readable]
        groups = [patient_key(facts.patient) if (facts := decoded.facts.get(i)) and facts.patient
                  else patient_id(rels[i]) for i in decoded.readable]
        if labelled:  # every image needs its row; a file that is no image needs none
            patients = csv_patients(self.root, rels, names)
            groups = [patients[rel] for rel in names]
        images = decoded.arrays.get((image_size, channels),
                                    np.zeros((0, image_size, image_size, channels), np.uint8))
        labels = np.array([files[i][1] for i in decoded.readable], dtype=np.int64)
        return (LabeledImages(images, labels, np.array(names, dtype=str),
                              np.array(groups, dtype=str)),
                [(rels[i], why) for i, why in decoded.skipped])


class NpzSource:
    """Arrays of (N, H, W) or (N, H, W, C) uint8 images and (N,) or (N, 1) 0/1 labels."""

    def __init__(self, path: Path) -> None:
        self.root = path
        try:
            with np.load(path, allow_pickle=False) as z:
                self._keys = set(z.files)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path} as a .npz file: {e}") from e
        if not {"train_images", "train_labels"} <= self._keys:
            raise DataError(f"{path} lacks train_images/train_labels (it has: "
                            f"{', '.join(sorted(self._keys))}). Expected the MedMNIST keys "
                            "{train,val,test}_{images,labels}.")

    def has_split(self, split: str) -> bool:
        return f"{split}_images" in self._keys

    def entries(self, split: str) -> list[tuple[str, int, int]]:
        self._require(split)
        st = self.root.stat()
        return [(f"{self.root.name}:{split}", st.st_size, st.st_mtime_ns)]

    def decode(self, split: str, image_size: int,
               channels: int) -> tuple[LabeledImages, list[Skipped]]:
        self._require(split)
        try:
            with np.load(self.root, allow_pickle=False) as z:
                images, labels = z[f"{split}_images"], z[f"{split}_labels"]
        except ValueError as e:  # object arrays: never unpickled
            raise DataError(f"{self.root}: {split} arrays hold Python objects, which are not "
                            "loaded (no unpickling); save plain uint8 arrays.") from e
        labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
        if len(images) != len(labels):
            raise DataError(f"{self.root}: {split}_images has {len(images)} images but "
                            f"{split}_labels has {len(labels)} labels; they must match.")
        if images.ndim not in (3, 4) or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{self.root}: {split}_images must be (N, H, W[, C]) and "
                            f"{split}_labels 0/1; got shapes {images.shape}, {labels.shape}.")
        resized = _resize(images.astype(np.uint8), image_size, channels)
        index = [str(i) for i in range(len(labels))]  # no patient named: each image its own
        names = np.array([f"{split}/{i}" for i in index], dtype=str)
        return LabeledImages(resized, labels.astype(np.int64), names,
                             np.array(index, dtype=str)), []

    def _require(self, split: str) -> None:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in self._keys:
                raise DataError(f"{self.root} has no '{key}' array; a MedMNIST file holds "
                                "{train,val,test}_{images,labels}.")


def _resize(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Through decode_image's own conversion and filter (data.images.resize), so .npz and
    folder data are preprocessed alike."""
    out = np.empty((len(images), image_size, image_size, channels), np.uint8)
    for i, img in enumerate(images):
        im = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
        out[i] = resize(im, image_size, channels)
    return out
