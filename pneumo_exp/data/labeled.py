"""LabeledImages: decoded images with their labels, file names and patients, kept together."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pneumo_exp.config import CLASS_NAMES


@dataclass(frozen=True)
class LabeledImages:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64: 0 NORMAL, 1 PNEUMONIA
    names: np.ndarray  # (N,) str: path relative to the dataset root, or "<split>/<index>"
    # (N,) str: the patient of each image, for grouped splits: a DICOM object's salted
    # PatientID hash, else the id in the file name
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> LabeledImages:
        return LabeledImages(self.images[index], self.labels[index], self.names[index],
                             self.groups[index])

    def digest(self) -> str:
        """Digest of what was decoded: names, labels, patients and pixels. The same files
        copied elsewhere, with other modification times, give the same digest."""
        h = hashlib.sha256()
        for part in (self.names, self.labels, self.groups):
            h.update("\n".join(map(str, part)).encode())
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}

    @staticmethod
    def concat(*parts: LabeledImages) -> LabeledImages:
        return LabeledImages(*(np.concatenate([getattr(p, f) for p in parts])
                               for f in ("images", "labels", "names", "groups")))
