"""How far images sit from what a network was trained on, read off its batch-normalization
statistics: no label needed.

Every BatchNormalization layer keeps the per-channel mean and variance of what it received
in training. At one layer, images differ from them by the distance of their channel means
(in stored standard deviations) and of their channel variances (the log of the ratio),
each the root mean square over channels; the shift is the root of the sum of both
squares, averaged over the layers. An image's shift uses its own means and variances; a
site's uses those of all its images together, as adaptation would re-estimate them. On the
full data's validation images the image shift stays below about 0.7 (its 99th percentile,
kept with each version); a CT slice, an MR slice or a colour test pattern mostly lies far
beyond. The stored statistics are training's, estimated on augmented batches, so even
validation's plain images lie at some distance (0.2-0.3 for the default); a site is judged
against that. It tells how unlike the training images the pixels are, not whether the
answers on them are right: the test split's patients, on which the networks lose
specificity, shift no more than validation's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-3  # as BatchNormalization's


def batch_norm_layers(model: Any) -> list[Any]:
    """The model's BatchNormalization layers in network order, nested models included
    (a functional model lists its layers in topological order)."""
    import keras

    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += batch_norm_layers(layer)
    return found


@dataclass(frozen=True)
class ChannelMoments:
    """Each image's per-channel mean and variance of what each BatchNormalization layer
    receives, and the layer's stored statistics."""

    means: list[np.ndarray]  # (images, channels) per layer
    variances: list[np.ndarray]  # (images, channels) per layer
    stored_means: list[np.ndarray]  # (channels,) per layer
    stored_variances: list[np.ndarray]  # (channels,) per layer, epsilon included

    def _distance(self, mean: np.ndarray, var: np.ndarray, k: int) -> np.ndarray:
        mu, sigma2 = self.stored_means[k], self.stored_variances[k]
        to_mean = (((mean - mu) ** 2) / sigma2).mean(axis=-1)
        to_var = (np.log((var + EPSILON) / sigma2) ** 2).mean(axis=-1)
        return np.sqrt(to_mean + to_var)

    def image_shift(self) -> np.ndarray:
        """(images,) each image's shift, the mean over the layers."""
        return np.mean([self._distance(m, v, k) for k, (m, v) in
                        enumerate(zip(self.means, self.variances, strict=True))], axis=0)

    def layer_shift(self) -> np.ndarray:
        """(layers,) the shift of all the images together at each layer: their pooled mean
        and variance per channel, what adaptation would store."""
        out = []
        for k, (m, v) in enumerate(zip(self.means, self.variances, strict=True)):
            pooled_mean = m.mean(axis=0)
            pooled_var = v.mean(axis=0) + m.var(axis=0)  # within images + between them
            out.append(float(self._distance(pooled_mean, pooled_var, k)))
        return np.array(out)


def channel_moments(model: Any, images: np.ndarray,
                    batch_size: int = 64) -> ChannelMoments | None:
    """The channel moments of `images` (uint8, the model's input shape) at every
    BatchNormalization layer of `model`; None for a model without one."""
    import keras

    layers = batch_norm_layers(model)
    if not layers:
        return None
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    means: list[list[np.ndarray]] = [[] for _ in layers]
    variances: list[list[np.ndarray]] = [[] for _ in layers]
    for i in range(0, len(images), batch_size):
        found = probe([images[i:i + batch_size].astype(np.float32)], training=False)
        for k, (layer, x) in enumerate(zip(layers, found, strict=True)):
            x = keras.ops.convert_to_numpy(x).astype(np.float64)
            axis = layer.axis % x.ndim
            spatial = tuple(a for a in range(1, x.ndim) if a != axis)
            means[k].append(x.mean(axis=spatial))
            variances[k].append(x.var(axis=spatial))
    return ChannelMoments(
        [np.concatenate(m) for m in means], [np.concatenate(v) for v in variances],
        [keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64) for layer in layers],
        [keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64) + EPSILON
         for layer in layers])


@dataclass(frozen=True)
class Shift:
    """The shift of a set of images under an ensemble: per image, per layer (each member's
    layers in turn), and the site's (the mean of its layers)."""

    images: np.ndarray
    layers: np.ndarray

    @property
    def site(self) -> float:
        return float(self.layers.mean()) if len(self.layers) else float("nan")


def shift(models: Sequence[Any], arrays: Sequence[np.ndarray]) -> Shift | None:
    """The shift of the same images under each member (each with its own preprocessing);
    None when no member has batch normalization."""
    found = [c for model, images in zip(models, arrays, strict=True)
             if (c := channel_moments(model, images)) is not None]
    if not found:
        return None
    return Shift(np.mean([c.image_shift() for c in found], axis=0),
                 np.concatenate([c.layer_shift() for c in found]))
