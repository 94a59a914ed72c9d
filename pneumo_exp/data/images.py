"""Decode image files of any size and colour mode to uint8 arrays: JPEG, PNG and the other
formats Pillow reads, and DICOM (dicom.py), told apart by their content, not their names.
Training, evaluation, prediction and adaptation all read through `read_image`: the full-size
pixels, then `resize` (docs/sites.md; docs/results.md, "One decoding for every container")."""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from pneumo_exp.data.dicom import (
    ImageFacts,
    RefusedImageError,
    UnreadableImageError,
    is_dicom,
    read_dicom,
)
from pneumo_exp.errors import DataError

UNREADABLE = UnreadableImageError.label  # the label of an input that gives no image
REFUSED = RefusedImageError.label  # the label of a DICOM image of another kind
OUTSIDE = "outside the intended population"  # of a DICOM image of whom a version is not for


def decode_image(path: str | Path | BinaryIO, image_size: int, channels: int) -> np.ndarray:
    """Return an (image_size, image_size, channels) uint8 array; the aspect ratio is not kept."""
    with quiet_decoding():
        return read_image(path, image_size, channels)[0]


_DECODING = threading.Lock()


@contextmanager
def quiet_decoding() -> Iterator[None]:
    """Warnings off while images decode (pydicom warns of every irregular element, Pillow of
    large images). catch_warnings swaps the process's one list of filters, so it is entered
    in the calling thread, one batch at a time, never in a decoding pool's threads."""
    with _DECODING, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_image(path: str | Path | BinaryIO, image_size: int,
               channels: int) -> tuple[np.ndarray, ImageFacts | None]:
    """`decode_image`'s array, and what a DICOM object's header says (None for other
    files): its patient id for grouping only, to be hashed (dicom.patient_key) before it is
    kept; the age and view for the population check. Callers silence warnings around it
    (quiet_decoding)."""
    if is_dicom(path):
        pixels, facts = read_dicom(path)
        return resize(Image.fromarray(pixels), image_size, channels), facts
    try:
        with Image.open(path) as im:
            im.load()
            return resize(ImageOps.exif_transpose(im), image_size, channels), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        text = str(e) or type(e).__name__
        raise UnreadableImageError("not an image file" if "cannot identify image file" in text
                                   else text.splitlines()[0][:200]) from e


def resize(im: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """An opened image to (image_size, image_size, channels) uint8: 8 bits, the configured
    channels, bilinear resizing. Every source (files, .npz arrays) goes through it."""
    im = _to_8bit(im, channels)
    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels)


def _to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """Grayscale 'L' or 'RGB'. 16-bit and float images are scaled, alpha is dropped."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P":
        im = im.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") and target == "L":
        im = im.convert("RGB")  # drop alpha first, so it does not darken the gray values
    return im if im.mode == target else im.convert(target)


Preprocessing = tuple[int, int]  # (image size, channels) a model was trained at


@dataclass(frozen=True)
class Decoded:
    """Images decoded once for each preprocessing a model (or an ensemble) needs."""

    arrays: dict[Preprocessing, np.ndarray]  # (N, size, size, channels) uint8 per key
    readable: list[int]  # positions of the decoded inputs, in order
    skipped: list[tuple[int, str]]  # (position, reason) of the inputs that are no image
    labels: dict[int, str] = field(default_factory=dict)  # position -> UNREADABLE or REFUSED
    facts: dict[int, ImageFacts] = field(default_factory=dict)  # position -> a DICOM's header


def decode_many(inputs: Sequence[str | Path | BinaryIO],
                preprocessing: Iterable[Preprocessing]) -> Decoded:
    """Every input decoded for every preprocessing, a few at a time; an unreadable one is
    skipped with its reason. File objects are read from their start for each preprocessing;
    a file object is given once (the inputs are read on several threads)."""
    keys = list(dict.fromkeys(preprocessing))

    def one(item: str | Path | BinaryIO
            ) -> dict[Preprocessing, tuple[np.ndarray, ImageFacts | None]] | UnreadableImageError:
        try:
            return {key: read_image(_rewound(item), *key) for key in keys}
        except UnreadableImageError as e:
            return e

    with quiet_decoding(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, inputs))
    out = Decoded({}, [], [])
    for i, found in enumerate(results):
        if isinstance(found, UnreadableImageError):
            out.skipped.append((i, str(found)))
            out.labels[i] = found.label
        else:
            out.readable.append(i)
            if headers := [header for _, header in found.values() if header is not None]:
                out.facts[i] = headers[-1]
    if out.readable:
        out.arrays.update({k: np.stack([results[i][k][0] for i in out.readable]) for k in keys})
    return out


def _rewound(item: str | Path | BinaryIO) -> str | Path | BinaryIO:
    if hasattr(item, "seek"):
        item.seek(0)
    return item


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the files under folders (recursively, hidden ones left out)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist.")
    return files


def files_fingerprint(root: Path, files: Sequence[Path]) -> str:
    """Digest of a set of files: their paths under `root` and their bytes."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:16]
