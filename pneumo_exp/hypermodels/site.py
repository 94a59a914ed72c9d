"""site: a registered version fine-tuned on a site's own labelled images, or a network of
the default family trained there from scratch; the search decides which holds (its space:
docs/sites.md, "4. A site version of its own"). The base's members and the training site's
images come in as Keras models and arrays: hypermodels know nothing of MLflow."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from pneumo_exp.hypermodels.base import StudyHyperModel, Training, compile_binary, training
from pneumo_exp.hypermodels.cnn import AugCNN
from pneumo_exp.settings import SITE_ARCH

SCRATCH = "scratch"
TRAIN_LAYERS = ("all", "top", "head")
# A network trained from scratch: its augmentation strengths searched (min, max, step)
SCRATCH_AUGMENTATION = {"rotation": (0.0, 15.0, 5.0), "zoom": (0.0, 0.3, 0.05),
                        "contrast": (0.0, 0.5, 0.1)}


def trainable_from(model: keras.Model, which: str) -> None:
    """Freeze all but `which` of the model: its dense head, or the last convolution block
    and the head, or nothing. A frozen batch normalization layer keeps its statistics."""
    layers = model.layers
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    first = {"all": 0, "top": convs[-1] if convs else 0, "head": dense[0] if dense else 0}[which]
    for i, layer in enumerate(layers):
        layer.trainable = i >= first


class Site(StudyHyperModel):
    arch = SITE_ARCH
    ui_params = ("start", "train_layers", "epochs", "mix")

    def __init__(self, input_shape: tuple[int, int, int], base_models: Sequence[keras.Model] = (),
                 scratch_point: Mapping[str, Any] | None = None,
                 training_site: tuple[np.ndarray, np.ndarray] | None = None,
                 batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(input_shape, **kwargs)
        self.base_models = list(base_models)
        self.batch_size = batch_size  # the search's (train.batch_size), for the mixed batches
        self.scratch_point = dict(scratch_point or {})
        self.training_site = training_site

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        starts = [f"member {i}" for i in range(len(self.base_models))] + [SCRATCH]
        start = s.choice(hp, "start", starts, starts[0])
        how = training(s, hp, "adam", 1e-4)
        train_layers = s.choice(hp, "train_layers", list(TRAIN_LAYERS), "all")
        s.choice(hp, "epochs", [10, 20, 30], 20)
        s.float(hp, "mix", 0.0, 1.0, 0.0, step=0.5)
        self.class_weighting(hp)
        with hp.conditional_scope("start", [SCRATCH]):
            augment = {name: s.float(hp, name, low, high, self.scratch_point.get(name, low),
                                     step=step)
                       for name, (low, high, step) in SCRATCH_AUGMENTATION.items()}
        if start == SCRATCH:
            point = {**self.scratch_point, **augment, "learning_rate": how.learning_rate}
            model = AugCNN(self.input_shape, space=point, seed=self.seed).build(
                kt.HyperParameters())
        else:
            base = self.base_models[starts.index(start)]
            model = keras.models.clone_model(base)
            model.set_weights(base.get_weights())
            trainable_from(model, train_layers)
        return compile_binary(keras.Model(model.inputs, model.outputs, name=self.arch), how)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        """The searched epochs, over which the learning rate anneals to 0; with `mix`, the
        training site's images drawn into every epoch."""
        epochs = int(hp.values["epochs"])
        data = args[0] if args else kwargs.pop("x")
        mix = float(hp.values.get("mix", 0.0))
        if not hasattr(data, "cardinality"):  # arrays: nothing to mix them with
            steps = math.ceil(len(data) / kwargs.get("batch_size", self.batch_size))
        elif mix and self.training_site is not None:
            data, steps = self._mixed(data, mix)
        else:
            steps = int(data.cardinality().numpy())
        rate = float(hp.values["learning_rate"])
        compile_binary(model, Training(
            hp.values.get("optimizer", "adam"),
            keras.optimizers.schedules.CosineDecay(rate, max(1, epochs * steps)),
            float(hp.values.get("label_smoothing", 0.0)),
            float(hp.values.get("weight_decay", 0.0))))
        kwargs["epochs"] = epochs
        return super().fit(hp, model, data, *args[1:], **kwargs)

    def _mixed(self, site: Any, mix: float) -> tuple[Any, int]:
        """The site's images with `mix` times as many of the training site's, interleaved
        and batched as the site's were; and the batches an epoch has. (The draw follows the
        trial's seed, which the tuner sets before each trial.)"""
        import tensorflow as tf

        images, labels = self.training_site
        rng = np.random.default_rng(np.random.randint(2**31))
        batch = self.batch_size
        site_images = site.unbatch()
        n_site = int(site_images.reduce(0, lambda n, _: n + 1).numpy())
        take = rng.choice(len(labels), min(len(labels), math.ceil(mix * n_site)),
                          replace=False)
        extra = tf.data.Dataset.from_tensor_slices(
            (images[take], labels[take].astype(np.float32).reshape(-1, 1)))
        together = tf.data.Dataset.sample_from_datasets(
            [site_images, extra], weights=[n_site / (n_site + len(take)),
                                           len(take) / (n_site + len(take))],
            seed=int(rng.integers(2**31)))
        return together.batch(batch).prefetch(2), math.ceil((n_site + len(take)) / batch)
