"""What every architecture shares: input facts, compile, augmentation, class weights, fit.

Hypermodels know nothing of MLflow; tracking attaches to the tuner's hooks
(pneumo_exp.search.tuners).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import keras
import keras_tuner as kt

from pneumo_exp.data.resample import one_resampling
from pneumo_exp.hypermodels.fused import fused_batch_norm
from pneumo_exp.hypermodels.space import Space

OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
              "sgd": keras.optimizers.SGD}
# Scales and shifts of normalization, and biases, keep their size: decaying them regularizes
# nothing (Loshchilov and Hutter 2019, "Decoupled weight decay regularization").
NO_WEIGHT_DECAY = ("gamma", "beta", "bias")


class StudyHyperModel(kt.HyperModel):
    """A binary classifier of (size, size, channels) uint8 images whose default point is the
    study's configuration. Subclasses implement `build`; `fit` applies the class weighting."""

    arch = ""  # the name in HYPERMODELS, experiments/<arch>.yaml and the MLflow experiment
    min_image_size = 8
    # The main hyperparameters, shown as columns of the MLflow UI's runs table (with the
    # learning rate, optimizer, dropout and class weighting every architecture has).
    ui_params: tuple[str, ...] = ()

    def __init__(self, input_shape: tuple[int, int, int], space: Mapping[str, Any] | None = None,
                 class_weight: Mapping[int, float] | None = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=type(self).__name__, tunable=True)
        if len(input_shape) != 3 or input_shape[2] not in (1, 3):
            raise ValueError(f"input_shape must be (size, size, 1 or 3); got {input_shape}.")
        if min(input_shape[:2]) < self.min_image_size:
            raise ValueError(f"{type(self).__name__} needs images of at least "
                             f"{self.min_image_size}px; got {input_shape[0]}px.")
        if kwargs:
            raise TypeError(f"unknown model option(s): {', '.join(sorted(kwargs))}")
        self.input_shape = tuple(input_shape)
        self.space = Space(space)
        self.balanced_class_weight = dict(class_weight) if class_weight else None
        self.seed = seed

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """The default point of the space (the study's configuration, unless `space`
        changed a default)."""
        hp = kt.HyperParameters()
        with contextlib.suppress(kt.errors.FailedTrialError):  # declared, did not fit
            self.build(hp)
        return dict(hp.values)

    def class_weighting(self, hp: kt.HyperParameters) -> str:
        """none, as in the study, or balanced: weights inverse to class frequency."""
        return self.space.choice(hp, "class_weight", ["none", "balanced"], "none")

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        """Keras' fit, with the class weighting; batch normalization trains through the fused
        kernel (fused.py), rotation, shift and zoom resample each image once
        (data/resample.py), and the optimizer's slots exist before the train step is
        traced (created inside it, they make TensorFlow trace it twice)."""
        if hp.values.get("class_weight") == "balanced" and self.balanced_class_weight:
            kwargs["class_weight"] = self.balanced_class_weight
        if hp.values.get("mixup"):
            args = (mixed_up(args[0] if args else kwargs.pop("x"), hp.values["mixup"],
                             kwargs.pop("class_weight", None)), *args[1:])
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with fused_batch_norm(model), one_resampling(model):
            history = model.fit(*args, **kwargs)
        # An update can break the weights after the last finite training loss of a run (one
        # batch an epoch, one epoch): the validation loss then shows it.
        for key in ("loss", "val_loss"):
            losses = history.history.get(key, [])
            if any(not math.isfinite(v) for v in losses):
                raise kt.errors.FailedTrialError(
                    f"the {'validation' if key == 'val_loss' else 'training'} loss diverged "
                    f"(became {losses[-1]}) at epoch {len(losses)}; this trial is marked "
                    "failed and the search goes on.")
        return history

    def inputs(self) -> keras.KerasTensor:
        return keras.Input(shape=self.input_shape, name="image")

    def classifier(self, inputs: keras.KerasTensor, x: keras.KerasTensor, how: Training,
                   units: int, dropout: float) -> keras.Model:
        """The head on the features `x`: ReLU Dense of `units`, dropout, sigmoid; compiled."""
        x = keras.layers.Dense(units, activation="relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, seed=self.seed)(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
        return compile_binary(keras.Model(inputs, outputs, name=self.arch), how)


class Training(NamedTuple):
    optimizer: str
    learning_rate: float
    label_smoothing: float  # targets 0/1 become s/2 and 1 - s/2 (0 in the study)
    weight_decay: float = 0.0  # decoupled: each step takes rate x decay of every weight
    mixup: float = 0.0  # alpha of the Beta distribution images and labels are blended by


def training(space: Space, hp: kt.HyperParameters, optimizer: str,
             learning_rate: float) -> Training:
    """Optimizer, learning rate, label smoothing, and where `space:` names them, weight
    decay and mixup. Smoothing keeps a confident network's scores off 0 and 1, where a
    threshold has no room and a new site's shift flips them (Mueller et al. 2019, "When does
    label smoothing help?"); mixup trains on blends of two images with the blend of their
    labels (Zhang et al. 2018), for scores that change smoothly between the classes."""
    return Training(space.choice(hp, "optimizer", list(OPTIMIZERS), optimizer),
                    space.float(hp, "learning_rate", 1e-5, 1e-2, learning_rate, sampling="log"),
                    space.float(hp, "label_smoothing", 0.0, 0.2, 0.0, step=0.05),
                    space.float_if_named(hp, "weight_decay", 0.0, 1.0),
                    space.float_if_named(hp, "mixup", 0.0, 1.0))


def compile_binary(model: keras.Model, how: Training) -> keras.Model:
    """Binary cross-entropy and the training metrics every search logs (the validation
    figures come from pneumo_exp.search.callbacks)."""
    optimizer = OPTIMIZERS[how.optimizer](learning_rate=how.learning_rate,
                                          weight_decay=how.weight_decay or None)
    if how.weight_decay:  # by the variables: Keras matches names with their layer's name
        optimizer.exclude_from_weight_decay(var_list=[
            v for v in model.trainable_variables if v.name in NO_WEIGHT_DECAY])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=how.label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc"),
                 keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
    )
    return model


def mixed_up(batches: Any, alpha: float,
             class_weight: Mapping[int, float] | None = None) -> Any:
    """Each batch of (images, labels) blended with itself in another order by Keras' MixUp,
    as (images, labels, sample weights): a blend's weight is the blend of its two images'
    class weights (Keras' class_weight would weigh it by its rounded label). Its draws follow
    the trial's seed, which the tuner sets before each trial."""
    if not hasattr(batches, "map"):
        raise kt.errors.FailedTrialError(
            "mixup blends batches of a tf.data dataset of (images, labels); this trial got "
            f"{type(batches).__name__}.")
    layer = keras.layers.MixUp(alpha)
    weights = dict(class_weight or {0: 1.0, 1: 1.0})

    def blend(images: Any, labels: Any) -> tuple[Any, Any, Any]:
        labels = keras.ops.cast(labels, "float32")
        weight = weights[0] + (weights[1] - weights[0]) * labels
        # one draw blends both columns: label and class weight by the same amount
        mixed = layer({"images": images, "labels": keras.ops.concatenate([labels, weight], 1)})
        return mixed["images"], mixed["labels"][:, :1], mixed["labels"][:, 1]

    return batches.map(blend)


def augmentation(space: Space, hp: kt.HyperParameters, seed: int | None = None,
                 value_range: tuple[float, float] = (0.0, 1.0)) -> keras.Layer:
    """The study's ImageDataGenerator settings as Keras layers, active in training only;
    rotation in degrees, brightness a fraction of `value_range`. Off in the study, for other
    scanners and framings: contrast, `aspect` (height and width zoomed apart), `blur` (the
    fraction of images blurred) and `crop` (zooming in further than `zoom`)."""
    rotation = space.float(hp, "rotation", 0.0, 30.0, 15.0, step=5.0)
    shift = space.float(hp, "shift", 0.0, 0.3, 0.2, step=0.05)
    zoom = space.float(hp, "zoom", 0.0, 0.3, 0.2, step=0.05)
    crop = space.float(hp, "crop", 0.0, 0.6, 0.0, step=0.1)
    flip = space.boolean(hp, "flip", True)
    brightness = space.float(hp, "brightness", 0.0, 0.5, 0.5, step=0.1)
    contrast = space.float(hp, "contrast", 0.0, 0.5, 0.0, step=0.1)
    aspect = space.boolean(hp, "aspect", False)
    blur = space.float(hp, "blur", 0.0, 1.0, 0.0, step=0.25)
    # Each layer draws from its own seed: layers given one seed draw the same numbers, so
    # every zoom-in would come with the same rotation, shift and contrast (one random
    # transformation per image, not one per layer).
    seeds = itertools.count(seed) if seed is not None else itertools.repeat(None)
    layers: list[keras.layers.Layer] = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360.0, fill_mode="nearest",
                                                  seed=next(seeds)))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="nearest",
                                                     seed=next(seeds)))
    if zoom or crop:
        # one factor zooms in and out as far; a pair (in, out): negative zooms in
        factor: float | tuple[float, float] = zoom if crop <= zoom else (-crop, zoom)
        layers.append(keras.layers.RandomZoom(factor, factor if aspect else None,
                                              fill_mode="nearest", seed=next(seeds)))
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=next(seeds)))
    if brightness:
        layers.append(keras.layers.RandomBrightness((0.0, brightness), value_range=value_range,
                                                    seed=next(seeds)))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=value_range,
                                                  seed=next(seeds)))
    if blur:
        layers.append(keras.layers.RandomGaussianBlur((blur, blur), kernel_size=5,
                                                      sigma=(0.1, 1.5), value_range=value_range,
                                                      seed=next(seeds)))
    if not layers:
        return keras.layers.Identity(name="augmentation")
    return keras.Sequential(layers, name="augmentation")
