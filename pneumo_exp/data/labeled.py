"""LabeledImages: decoded images with their labels and file names, kept together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.split import patient_id


@dataclass(frozen=True)
class LabeledImages:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64: 0 NORMAL, 1 PNEUMONIA
    names: np.ndarray  # (N,) str: path relative to the dataset root, or "<split>/<index>"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def groups(self) -> np.ndarray:
        """Patient id of every image, for grouped splits."""
        return np.array([patient_id(str(n).rsplit("/", 1)[-1]) for n in self.names])

    def subset(self, index: np.ndarray) -> LabeledImages:
        return LabeledImages(self.images[index], self.labels[index], self.names[index])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}

    @staticmethod
    def concat(*parts: LabeledImages) -> LabeledImages:
        return LabeledImages(np.concatenate([p.images for p in parts]),
                             np.concatenate([p.labels for p in parts]),
                             np.concatenate([p.names for p in parts]))
