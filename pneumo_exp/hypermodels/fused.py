"""Batch normalization trained through TensorFlow's fused kernel (FusedBatchNormV3), the
network unchanged: Keras 3's separate operations were more than half of a CPU train step
(docs/searching.md, "How a trial trains"). Only the training step changes: the layers stay
Keras' own, so the saved network, its inference and adaptation are as before."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from pneumo_exp.layer_calls import calls_replaced

MIN_EPSILON = 1.001e-5  # FusedBatchNormV3 refuses a smaller one


def fused_call(layer: keras.layers.BatchNormalization, inputs: Any, training: bool | None = None,
               mask: Any = None) -> Any:
    """The layer's call, its training step through TensorFlow's fused kernel where that
    computes what Keras does (a float32 image batch normalized over its channels, the last
    axis, without a mask, renormalization or replicas); otherwise Keras' own call."""
    if not (training and layer.trainable and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and layer.axis in (-1, 3) and inputs.dtype == "float32"
            and mask is None and not layer.renorm and not layer.synchronized
            and layer.epsilon >= MIN_EPSILON):
        return type(layer).call(layer, inputs, training=training, mask=mask)
    import tensorflow as tf

    channels = inputs.shape[-1]
    gamma = layer.gamma if layer.scale else tf.ones([channels], inputs.dtype)
    beta = layer.beta if layer.center else tf.zeros([channels], inputs.dtype)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=layer.epsilon, data_format="NHWC", is_training=True)
    # The kernel returns the unbiased variance (n / (n - 1)); Keras keeps the biased one.
    n = tf.cast(tf.size(inputs) // channels, variance.dtype)
    variance = variance * (n - 1.0) / n
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return outputs


def batch_norm_layers(model: Any) -> list[keras.layers.BatchNormalization]:
    """The model's BatchNormalization layers, nested models included."""
    found: list[keras.layers.BatchNormalization] = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        else:
            found += batch_norm_layers(layer)
    return found


@contextlib.contextmanager
def fused_batch_norm(model: keras.Model) -> Iterator[None]:
    """Within: the model's BatchNormalization layers train through the fused kernel (their
    `call`, on each layer object: its class, the names of its weights in a saved file and
    its configuration stay Keras' own throughout)."""
    with calls_replaced(batch_norm_layers(model), fused_call):
        yield
