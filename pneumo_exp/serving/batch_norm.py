"""Site adaptation: a model's BatchNormalization statistics re-estimated on a new site's
unlabeled images (AdaBN, Li et al. 2016), in the regime training estimated them in: in
training mode, on augmented batches of training's size, a few passes, each layer's stored
mean and variance the average of its batch statistics. No other weight changes. Why
training mode, and what inference mode cost: docs/sites.md, "3. Adapt to the site's images"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from pneumo_exp.data.resample import one_resampling

# Fewer images than this give per-channel statistics of one or two patients, not of a site.
MIN_ADAPTATION_IMAGES = 32
TRAINING_BATCH = 32  # train.batch_size: a batch's statistics depend on its size
PASSES = 3  # times the site's images go through, each with fresh augmentation
EPSILON = 1e-3  # as BatchNormalization's


def batch_norm_layers(model: Any) -> list[Any]:
    """The model's BatchNormalization layers in network order, nested models included
    (a functional model lists its layers in topological order)."""
    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += batch_norm_layers(layer)
    return found


class NothingToAdaptError(ValueError):
    """The model has no normalization statistics (no BatchNormalization layer)."""


def adapt_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = TRAINING_BATCH,
                     passes: int = PASSES, seed: int = 0) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the average of its
    input's batch statistics on `images` (uint8) in training mode: what training would have
    stored on this site, seeded. The number of layers adapted; NothingToAdaptError: none."""
    layers = batch_norm_layers(model)
    if not layers:
        raise NothingToAdaptError(f"model '{model.name}' has no BatchNormalization layer: "
                                  "there are no normalization statistics to adapt.")
    if len(images) < MIN_ADAPTATION_IMAGES:
        raise ValueError(f"{len(images)} images are too few to adapt on; at least "
                         f"{MIN_ADAPTATION_IMAGES} are needed.")
    # In training mode each layer normalizes by its batch, so what a layer receives does
    # not depend on the statistics stored before it: one pass measures every layer.
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    means: list[list[np.ndarray]] = [[] for _ in layers]
    variances: list[list[np.ndarray]] = [[] for _ in layers]
    keras.utils.set_random_seed(seed)  # the augmentation's draws
    order = np.random.default_rng(seed)
    with one_resampling(model):  # augmented as the training step augments
        for _ in range(passes):
            shuffled = images[order.permutation(len(images))]
            for i in range(0, len(shuffled) - batch_size + 1, batch_size):  # whole batches
                found = probe([shuffled[i:i + batch_size].astype(np.float32)], training=True)
                found = found if isinstance(found, list | tuple) else [found]  # one layer's
                for k, (layer, x) in enumerate(zip(layers, found, strict=True)):
                    x = keras.ops.convert_to_numpy(x).astype(np.float64)
                    axes = tuple(a for a in range(x.ndim) if a != layer.axis % x.ndim)
                    means[k].append(x.mean(axis=axes))
                    variances[k].append(x.var(axis=axes))
    # (training mode also moved the stored statistics; they are all replaced here)
    for layer, m, v in zip(layers, means, variances, strict=True):
        layer.moving_mean.assign(np.mean(m, axis=0).astype(np.float32))
        layer.moving_variance.assign(np.mean(v, axis=0).astype(np.float32))
    return len(layers)


def image_shift(models: Sequence[keras.Model], arrays: Sequence[np.ndarray],
                batch_size: int = 64) -> np.ndarray | None:
    """Each image's distance from the statistics the members' batch-normalization layers
    stored (channel means in stored standard deviations, and log variance ratios), averaged
    over layers and members; None without batch normalization. The per-image check of
    versions registered before feature references (their limit: `shift_limit`)."""
    found = []
    for model, images in zip(models, arrays, strict=True):
        layers = batch_norm_layers(model)
        if not layers:
            continue
        probe = keras.Model(model.inputs, [layer.input for layer in layers])
        shifts = []
        for i in range(0, len(images), batch_size):
            out = probe([images[i:i + batch_size].astype(np.float32)], training=False)
            per_layer = []
            for layer, x in zip(layers, out if isinstance(out, list | tuple) else [out],
                                strict=True):
                x = keras.ops.convert_to_numpy(x).astype(np.float64)
                spatial = tuple(a for a in range(1, x.ndim) if a != layer.axis % x.ndim)
                mean = keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
                var = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
                var = var + EPSILON
                to_mean = ((x.mean(axis=spatial) - mean) ** 2 / var).mean(axis=-1)
                to_var = (np.log((x.var(axis=spatial) + EPSILON) / var) ** 2).mean(axis=-1)
                per_layer.append(np.sqrt(to_mean + to_var))
            shifts.append(np.mean(per_layer, axis=0))
        found.append(np.concatenate(shifts))
    return np.mean(found, axis=0) if found else None


def can_adapt(models: Sequence[keras.Model], arrays: Sequence[np.ndarray]) -> bool:
    """Whether every member has normalization statistics and its images are enough."""
    return all(batch_norm_layers(m) for m in models) and all(
        len(a) >= MIN_ADAPTATION_IMAGES for a in arrays)


@contextlib.contextmanager
def adapted(models: Sequence[keras.Model], arrays: Sequence[np.ndarray]
            ) -> Iterator[Sequence[keras.Model]]:
    """The members adapted to their `arrays` (adapt_batch_norm) for the time of the block,
    their statistics put back after: what `pneumo-exp adapt` would make of them, without a
    copy of the networks."""
    saved = [[(layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
              for layer in batch_norm_layers(m)] for m in models]
    try:
        for model, images in zip(models, arrays, strict=True):
            adapt_batch_norm(model, images)
        yield models
    finally:
        for model, stats in zip(models, saved, strict=True):
            for layer, (mean, variance) in zip(batch_norm_layers(model), stats, strict=True):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
