"""transfer: a Keras applications network pretrained on ImageNet, frozen, with a new head;
optionally its top layers fine-tuned after (docs/searching.md, "Architectures", also for
`model.weights`). Each base gets its own `preprocess_input`, written as layers so the
model loads in Keras' safe mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from pneumo_exp.errors import UserError
from pneumo_exp.hypermodels.base import (
    StudyHyperModel,
    Training,
    augmentation,
    compile_binary,
    training,
)

log = logging.getLogger(__name__)

# name -> (constructor, preprocessing mode of its preprocess_input)
BASES: dict[str, tuple[Callable[..., keras.Model], str]] = {
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, "included"),
    "efficientnet_b0": (keras.applications.EfficientNetB0, "included"),
    "densenet121": (keras.applications.DenseNet121, "torch"),
}
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class WeightsUnavailableError(UserError, kt.errors.FatalError):
    """Pretrained weights cannot be had: the search stops (every trial would fail alike)."""


def preprocess(x: keras.KerasTensor, mode: str) -> keras.KerasTensor:
    """The base's `preprocess_input` for 0-255 RGB input, as serializable layers and ops."""
    if mode == "caffe":  # RGB -> BGR, minus the ImageNet mean
        x = keras.ops.flip(x, axis=-1)
        return keras.layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0))(x)
    if mode == "tf":  # to [-1, 1]
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    if mode == "torch":  # to [0, 1], then standardized per channel
        x = keras.layers.Rescaling(1.0 / 255)(x)
        return keras.layers.Normalization(mean=IMAGENET_MEAN_RGB,
                                          variance=[s * s for s in IMAGENET_STD_RGB])(x)
    return x  # "included": the base rescales its 0-255 input itself


def base_network(model: keras.Model) -> keras.Model:
    """The pretrained network inside a transfer model (the augmentation is a Sequential)."""
    return next(layer for layer in model.layers
                if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential))


class Transfer(StudyHyperModel):
    arch = "transfer"
    ui_params = ("base", "pooling", "fine_tune_layers")
    min_image_size = 32

    def __init__(self, input_shape: tuple[int, int, int], weights: str | None = "auto",
                 **kwargs: Any) -> None:
        super().__init__(input_shape, **kwargs)
        if weights in (None, "none", "null"):
            weights = None
        elif weights not in ("auto", "imagenet"):
            if not Path(weights).expanduser().is_file():
                raise ValueError(f"model.weights must be auto, imagenet, null or a weights "
                                 f"file; {weights!r} is not a file")
            weights = str(Path(weights).expanduser())
        self.weights = weights
        self._no_imagenet: set[str] = set()  # bases whose ImageNet weights failed to load

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        base_name = s.choice(hp, "base", list(BASES), "resnet50")
        pooling = s.choice(hp, "pooling", ["flatten", "avg"], "flatten")
        dense_units = s.choice(hp, "dense_units", [64, 128, 256, 512], 256)
        dropout = s.float(hp, "dropout", 0.0, 0.5, 0.0, step=0.1)
        how = training(s, hp, "rmsprop", 1e-3)
        s.choice(hp, "fine_tune_layers", [0, 20, 50], 0)  # used in fit()
        augment = augmentation(s, hp, seed=self.seed, value_range=(0.0, 255.0))
        self.class_weighting(hp)

        constructor, mode = BASES[base_name]
        size = self.input_shape[0]
        base, pretrained = self._base(constructor, base_name, (size, size, 3))
        base.trainable = not pretrained  # without pretrained weights, train it all
        inputs = self.inputs()
        x = augment(inputs)
        if self.input_shape[2] == 1:
            x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
        x = preprocess(x, mode)
        x = base(x, training=False)  # frozen batch-norm statistics, also when fine-tuning
        x = (keras.layers.Flatten() if pooling == "flatten"
             else keras.layers.GlobalAveragePooling2D())(x)
        return self.classifier(inputs, x, how, dense_units, dropout)

    def _base(self, constructor: Callable[..., keras.Model], name: str,
              shape: tuple[int, int, int]) -> tuple[keras.Model, bool]:
        """The base network, and whether it has pretrained weights."""
        if self.weights not in ("auto", "imagenet") or name in self._no_imagenet:
            weights = None if name in self._no_imagenet else self.weights
            return (constructor(include_top=False, weights=weights, input_shape=shape),
                    weights is not None)
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=shape), True
        except Exception as e:
            how = ("Run once with a network (Keras caches them in ~/.keras/models), or set "
                   "model.weights to a local weights file of the base without its top, or to "
                   "null to train from scratch (--set model.weights=null).")
            reason = str(e).splitlines()[0][:160]
            if self.weights == "imagenet":
                raise WeightsUnavailableError(
                    f"cannot get the ImageNet weights of {name} ({reason}). {how}") from e
            log.warning("ImageNet weights of %s unavailable (%s): it is trained from scratch "
                        "in this search. %s", name, reason, how)
            self._no_imagenet.add(name)
            return constructor(include_top=False, weights=None, input_shape=shape), False

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        """Phase 1 trains the head on the frozen base; phase 2, if `fine_tune_layers` > 0,
        unfreezes the base's top layers (not batch normalization) at a tenth of the learning
        rate for half as many epochs again."""
        history = super().fit(hp, model, *args, **kwargs)
        n_layers = hp.get("fine_tune_layers")
        base = base_network(model)
        if not n_layers or not history.epoch or base.trainable:  # trainable: no pretraining
            return history
        base.trainable = True
        for i, layer in enumerate(base.layers):  # the top n_layers, but batch normalization
            layer.trainable = (i >= len(base.layers) - n_layers
                               and not isinstance(layer, keras.layers.BatchNormalization))
        compile_binary(model, Training(hp.get("optimizer"), hp.get("learning_rate") / 10,
                                       hp.get("label_smoothing"),
                                       hp.values.get("weight_decay", 0.0)))
        epochs = kwargs.get("epochs", 1)
        done = history.epoch[-1] + 1
        kwargs.update(initial_epoch=done, epochs=done + max(1, (epochs - kwargs.get(
            "initial_epoch", 0)) // 2))
        second = super().fit(hp, model, *args, **kwargs)
        for key, values in history.history.items():
            second.history[key] = list(values) + list(second.history.get(key, []))
        second.epoch = list(history.epoch) + list(second.epoch)
        return second
