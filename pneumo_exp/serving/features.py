"""What the network sees: each image's pooled features (what the head reads, the members'
side by side), and `FeatureReference`, the picture of validation's a version carries to
tell the training population from another without labels (docs/sites.md, "1. The site
check"). No image, name or id: a few numbers per image, no patient readable from them."""

from __future__ import annotations

import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from pneumo_exp.data.split import group_codes, group_kfold
from pneumo_exp.serving.batch_norm import adapted, can_adapt

COMPONENTS = 32  # principal components kept: what separates sites, at a few numbers an image
ADAPTED_PREVALENCES = (0.0, 0.25, 0.5, 0.75, 1.0)  # validation drawn to each, adapted to
HELD_OUT_FOLDS = 3  # one third of validation's patients held out of the reference
FLAG_QUANTILE = 99.0  # an image beyond this percentile of held-out validation is flagged


def feature_layer(model: Any) -> Any:
    """The layer whose output a member's head reads: its last global pooling layer, or the
    input of its last layer."""
    import keras

    pooled = [layer for layer in model.layers
              if isinstance(layer, keras.layers.GlobalAveragePooling2D
                            | keras.layers.GlobalMaxPooling2D)]
    return pooled[-1].output if pooled else model.layers[-1].input


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pooled_features(models: Sequence[Any], arrays: Sequence[np.ndarray],
                    batch_size: int = 128) -> np.ndarray:
    """(images, features) the members' features of the same images (each member on its own
    preprocessing), side by side."""
    import keras

    found = []
    for model, images in zip(models, arrays, strict=True):
        if model not in _PROBES:  # built once per member; sharing its layers, it sees them adapted
            _PROBES[model] = keras.Model(model.inputs, feature_layer(model))
        features = _PROBES[model].predict(images, batch_size=batch_size, verbose=0)
        found.append(np.asarray(features, dtype=np.float64).reshape(len(images), -1))
    return np.concatenate(found, axis=1)


@dataclass(frozen=True)
class FeatureReference:
    """Validation as a network sees it (the module's docstring). Arrays only, so it is
    saved and loaded as one .npz artifact of the version."""

    center: np.ndarray  # (features,) the standardization
    scale: np.ndarray  # (features,)
    components: np.ndarray  # (COMPONENTS, features) the projection
    reference: np.ndarray  # (n, COMPONENTS) validation's reference part
    held_out: np.ndarray  # (m, COMPONENTS) its held-out part
    scores: np.ndarray  # validation's calibrated scores
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (n,) the
    # reference part's classes; empty in versions registered before they were kept
    groups: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (n,) its
    # patients, numbered (data/split.py group_codes); empty alike
    adapted_at: np.ndarray = field(default_factory=lambda: np.empty(0))  # (k,) prevalences
    # validation was drawn to and adapted to (an adapted reference's; else empty)
    reference_at: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0)))  # (k, n,
    # COMPONENTS) the reference part as seen so

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
            scores: np.ndarray) -> FeatureReference:
        """From validation's features, split by patient into the reference and held-out
        parts; the projection is the reference part's."""
        keep, held = reference_split(labels, groups)
        center = features[keep].mean(axis=0)
        scale = features[keep].std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        z = (features[keep] - center) / scale
        _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
        components = vt[:COMPONENTS]
        return cls(center, scale, components, z @ components.T,
                   ((features[held] - center) / scale) @ components.T,
                   np.asarray(scores, dtype=np.float64),
                   np.asarray(labels, dtype=np.int64)[keep], group_codes(groups)[keep])

    @property
    def knows_classes(self) -> bool:
        """Whether the reference part's classes and patients are kept (versions registered
        before they were have neither)."""
        return len(self.labels) == len(self.reference) == len(self.groups) > 0

    def drawn_to(self, prevalence: float | None) -> np.ndarray:
        """Rows of the reference part drawn to `prevalence` (drawn_rows); every row when
        the prevalence is None or the classes are not kept."""
        if prevalence is None or not self.knows_classes:
            return np.arange(len(self.reference))
        return drawn_rows(self.labels, prevalence, np.random.default_rng(0))

    def seen_at(self, prevalence: float | None) -> np.ndarray:
        """The reference part as seen adapted to validation drawn to `prevalence`
        (linearly between the nearest two of `adapted_at`, the nearest beyond them); as
        it is without a prevalence, or when this reference keeps none."""
        if prevalence is None or not len(self.adapted_at):
            return self.reference
        position = float(np.interp(prevalence, self.adapted_at,
                                   np.arange(len(self.adapted_at))))
        lower = int(position)
        upper = min(lower + 1, len(self.adapted_at) - 1)
        w = position - lower
        return (1 - w) * self.reference_at[lower] + w * self.reference_at[upper]

    def project(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.center) / self.scale) @ self.components.T

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Each image's Mahalanobis distance from the reference part."""
        return self._distance(self.project(features))

    @cached_property
    def limit(self) -> float:
        """The distance beyond which an image is flagged: all but 1% of held-out
        validation lie within it."""
        return float(np.percentile(self._distance(self.held_out), FLAG_QUANTILE))

    @cached_property
    def _covariance(self) -> LedoitWolf:
        return LedoitWolf().fit(self.reference)

    def _distance(self, projected: np.ndarray) -> np.ndarray:
        return np.sqrt(self._covariance.mahalanobis(projected))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{f.name: getattr(self, f.name) for f in fields(self)})
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> FeatureReference:
        with np.load(path) as saved:  # a field it lacks keeps its default
            return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def drawn_rows(labels: np.ndarray, prevalence: float, rng: np.random.Generator
               ) -> np.ndarray:
    """Rows drawn at random, by class, to `prevalence` (the share of class 1), as many as
    the classes allow; every row when a class is missing."""
    rows = np.arange(len(labels))
    normal, pneumonia = rows[labels == 0], rows[labels == 1]
    if not len(normal) or not len(pneumonia):
        return rows
    total = min(len(normal) / max(1.0 - prevalence, 1e-9), len(pneumonia) / max(prevalence, 1e-9))
    take = min(len(pneumonia), round(total * prevalence))
    return np.sort(np.r_[rng.choice(normal, min(len(normal), round(total) - take),
                                    replace=False),
                         rng.choice(pneumonia, take, replace=False)])


def reference_split(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of validation's reference part and of its held-out part (a third of its
    patients, the classes kept)."""
    fold = group_kfold(HELD_OUT_FOLDS, 0)
    return next(fold.split(np.zeros(len(labels)), labels, group_codes(groups)))


def validation_features(models: Sequence[Any], arrays: Sequence[np.ndarray],
                        labels: np.ndarray, groups: np.ndarray, scores: np.ndarray
                        ) -> tuple[FeatureReference, FeatureReference | None]:
    """Validation's feature references: as the members see it, and as they see it adapted
    to validation itself (None without batch normalization), with its reference part as
    seen adapted to validation drawn to each of ADAPTED_PREVALENCES."""
    reference = FeatureReference.fit(pooled_features(models, arrays), labels, groups, scores)
    if not can_adapt(models, arrays):
        return reference, None
    with adapted(models, arrays):
        found = FeatureReference.fit(pooled_features(models, arrays), labels, groups, scores)
    keep, _ = reference_split(labels, groups)  # the rows of found.reference
    at, seen = [], []
    rng = np.random.default_rng(0)
    for prevalence in ADAPTED_PREVALENCES:
        batch = [a[drawn_rows(labels, prevalence, rng)] for a in arrays]
        if can_adapt(models, batch):
            with adapted(models, batch):
                seen.append(found.project(pooled_features(models, [a[keep] for a in arrays])))
            at.append(prevalence)
    return reference, replace(found, adapted_at=np.array(at, dtype=np.float64),
                              reference_at=np.array(seen).reshape(
                                  len(at), *found.reference.shape))
