"""Rotation, shift and zoom in one resampling of each training image: Keras' layers each
resample the batch (ImageProjectiveTransformV3), three of them a tenth of a CPU train step
(docs/searching.md, "How a trial trains"). Each layer still draws its own transformation
from its own seed; their matrices are multiplied and the image is resampled once. Training
(hypermodels/base.py) and adaptation (serving/batch_norm.py) augment through it; as in
hypermodels/fused.py the layers stay Keras' own, so the saved network and its inference
are as before. In data/, the stage both come after, which a packaged version imports
without Keras Tuner."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from pneumo_exp.layer_calls import calls_replaced

GEOMETRIC = (keras.layers.RandomRotation, keras.layers.RandomTranslation,
             keras.layers.RandomZoom)


def output_to_input(layer: keras.Layer, transformation: dict[str, Any], height: Any,
                    width: Any) -> Any:
    """The (batch, 3, 3) matrices that map a pixel of `layer`'s output to where it samples
    its input, from the transformation the layer drew (its `get_random_transformation`):
    the flat transforms its own call hands to `keras.ops.image.affine_transform`."""
    ops = keras.ops
    if isinstance(layer, keras.layers.RandomRotation):
        flat = ops.cast(transformation["rotation_matrix"], "float32")
    elif isinstance(layer, keras.layers.RandomTranslation):
        shift = ops.cast(transformation["translations"], "float32")  # (dx, dy) in pixels
        ones, zeros = ops.ones_like(shift[:, :1]), ops.zeros_like(shift[:, :1])
        flat = ops.concatenate([ones, zeros, -shift[:, :1], zeros, ones, -shift[:, 1:],
                                zeros, zeros], axis=1)
    else:  # RandomZoom: about the image's centre
        zx = ops.cast(transformation["width_zoom"], "float32")
        zy = ops.cast(transformation["height_zoom"], "float32")
        zeros = ops.zeros_like(zx)
        cx = (ops.cast(width, "float32") - 1.0) / 2.0
        cy = (ops.cast(height, "float32") - 1.0) / 2.0
        flat = ops.concatenate([zx, zeros, cx * (1.0 - zx), zeros, zy, cy * (1.0 - zy),
                                zeros, zeros], axis=1)
    ones = ops.ones_like(flat[:, :1])
    return ops.reshape(ops.concatenate([flat, ones], axis=1), (-1, 3, 3))


def resample_once(layers: Sequence[keras.Layer], images: Any) -> Any:
    """`images` through `layers` (geometric, one fill and interpolation) in one resampling:
    each layer's draw, the matrices multiplied in the layers' order."""
    ops = keras.ops
    height, width = ops.shape(images)[1], ops.shape(images)[2]
    composed = None
    for layer in layers:
        m = output_to_input(layer, layer.get_random_transformation(images, training=True),
                            height, width)
        composed = m if composed is None else ops.matmul(composed, m)
    flat = ops.reshape(composed, (-1, 9))[:, :8]
    first = layers[0]
    return ops.image.affine_transform(
        ops.cast(images, first.compute_dtype), flat, interpolation=first.interpolation,
        fill_mode=first.fill_mode, fill_value=first.fill_value, data_format="channels_last")


def composable(a: keras.Layer, b: keras.Layer) -> bool:
    return all(getattr(a, k) == getattr(b, k)
               for k in ("interpolation", "fill_mode", "fill_value", "data_format",
                         "compute_dtype"))


def resampled_call(model: keras.Sequential, inputs: Any, training: bool | None = None,
                   mask: Any = None) -> Any:
    """The Sequential's call, its runs of geometric layers resampled once in training;
    otherwise (inference, a batch not of 4 dimensions, channels first) Keras' own call."""
    if not (training and len(inputs.shape) == 4):
        return type(model).call(model, inputs, training=training, mask=mask)
    x, run = inputs, []
    for layer in [*model.layers, None]:
        if (isinstance(layer, GEOMETRIC) and layer.data_format == "channels_last"
                and (not run or composable(run[0], layer))):
            run.append(layer)
            continue
        if run:
            x = run[0](x, training=True) if len(run) == 1 else resample_once(run, x)
            run = []
            if isinstance(layer, GEOMETRIC):  # another fill or interpolation: a run of its own
                run.append(layer)
                continue
        if layer is not None:
            x = layer(x, training=True)
    return x


def augmentations(model: Any) -> list[keras.Sequential]:
    """The Sequential models with two or more geometric layers: `model` itself and its
    parts, nested ones included."""
    found: list[keras.Sequential] = []
    if isinstance(model, keras.Sequential) and sum(
            isinstance(layer, GEOMETRIC) for layer in model.layers) >= 2:
        found.append(model)
    for layer in getattr(model, "layers", []):
        found += augmentations(layer)
    return found


@contextlib.contextmanager
def one_resampling(model: keras.Model) -> Iterator[None]:
    """Within: the model's augmentations resample each training image once (their `call`, on
    each Sequential object: its layers, their weights and configuration stay Keras' own)."""
    with calls_replaced(augmentations(model), resampled_call):
        yield
