"""Site adaptation: a model's BatchNormalization statistics re-estimated on a new site's
unlabeled images (AdaBN, Li et al. 2016, "Revisiting batch normalization for practical
domain adaptation").

A network trained on one hospital's scanners normalizes every feature map with the mean
and variance it saw there; on another site's images those statistics are off, which shifts
the probabilities (the test split's NORMALs are called pneumonia). Re-estimating them from
the site's own images, with no label, moves the features back to where the classifier
expects them. The layers are adapted in network order: each layer's statistics are
measured on the output of the layers before it, already adapted. No other weight changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from pneumo_exp.serving.shift import batch_norm_layers

# Fewer images than this give per-channel statistics of one or two patients, not of a site.
MIN_ADAPTATION_IMAGES = 32


class NothingToAdaptError(ValueError):
    """The model has no normalization statistics (no BatchNormalization layer)."""


class _Moments:
    """Running per-channel mean and variance over batches (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray, axes: tuple[int, ...]) -> None:
        x = x.astype(np.float64)
        n = int(np.prod([x.shape[a] for a in axes]))
        mean, m2 = x.mean(axis=axes), x.var(axis=axes) * n
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        delta, total = mean - self.mean, self.n + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    @property
    def variance(self) -> np.ndarray:
        assert self.m2 is not None
        return self.m2 / self.n


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size].astype(np.float32)


def _input_moments(model: keras.Model, layer: keras.layers.BatchNormalization,
                   images: np.ndarray, batch_size: int) -> _Moments:
    """Mean and variance of what `layer` receives when the model runs on `images` (in
    inference mode), per channel of its axis."""
    moments = _Moments()
    call = layer.call

    def recording_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        x = keras.ops.convert_to_numpy(inputs)
        axis = layer.axis % x.ndim
        moments.add(x, tuple(a for a in range(x.ndim) if a != axis))
        return call(inputs, *args, **kwargs)

    layer.call = recording_call  # this instance only; removed below
    try:
        for batch in _batches(images, batch_size):
            model(batch, training=False)
    finally:
        del layer.call
    return moments


def adapt_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the statistics of
    its input on `images` (uint8, the model's input shape), in network order. Returns the
    number of layers adapted; raises NothingToAdaptError when there is none."""
    layers = batch_norm_layers(model)
    if not layers:
        raise NothingToAdaptError(f"model '{model.name}' has no BatchNormalization layer: "
                                  "there are no normalization statistics to adapt.")
    if len(images) < MIN_ADAPTATION_IMAGES:
        raise ValueError(f"{len(images)} images are too few to adapt on; at least "
                         f"{MIN_ADAPTATION_IMAGES} are needed.")
    for layer in layers:
        moments = _input_moments(model, layer, images, batch_size)
        layer.moving_mean.assign(moments.mean.astype(np.float32))
        layer.moving_variance.assign(moments.variance.astype(np.float32))
    return len(layers)
