"""MedMNIST-style sources: pneumoniamnist*.npz with {train,val,test}_{images,labels}."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pneumo_exp.data.images import resize
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.errors import DataError


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
               channels: int) -> tuple[LabeledImages, list[tuple[str, str]]]:
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
