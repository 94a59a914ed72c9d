"""cnn: the study's convolutional network, trained on the images as they are (its default
point and space: docs/searching.md, "Architectures"). The intensity normalization of each
image (none, `standardize` after augmentation, or `equalize` then standardize) makes the
model less sensitive to a scanner's exposure, contrast and tone curve.
aug_cnn: the study's final model, its CNN trained on augmented images; the search adds the
augmentation strengths to the cnn's space."""

from __future__ import annotations

import keras
import keras_tuner as kt

from pneumo_exp.hypermodels.base import (
    StudyHyperModel,
    augmentation,
    training,
)

INTENSITY = ("none", "standardize", "equalize")
STUDY_FILTERS = (32, 32, 64, 128)  # the study's three blocks, and a fourth when searched
STUDY_KERNELS = (3, 4, 3, 3)


class CNN(StudyHyperModel):
    arch = "cnn"
    ui_params = ("conv_blocks", "batch_norm", "head", "intensity")
    min_image_size = 32  # the study's three valid convolutions and poolings need room
    augment = False
    learning_rate = 1e-3

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        blocks = s.int(hp, "conv_blocks", 2, 4, 3)
        filters, kernels = [], []
        for i in range(len(STUDY_FILTERS)):
            # Block i's hyperparameters exist in every space, active when there are > i blocks.
            with hp.conditional_scope("conv_blocks", list(range(i + 1, len(STUDY_FILTERS) + 1))):
                f = s.choice(hp, f"filters_{i + 1}", [16, 32, 64, 128], STUDY_FILTERS[i])
                k = s.choice(hp, f"kernel_{i + 1}", [3, 4, 5], STUDY_KERNELS[i])
            if i < blocks:
                filters.append(f)
                kernels.append(k)
        batch_norm = s.boolean(hp, "batch_norm", False)
        head = s.choice(hp, "head", ["flatten", "global_avg"], "flatten")
        dense_units = s.choice(hp, "dense_units", [32, 64, 128, 256], 64)
        dropout = s.float(hp, "dropout", 0.0, 0.5, 0.0, step=0.1)
        how = training(s, hp, "rmsprop", self.learning_rate)
        intensity = s.choice(hp, "intensity", list(INTENSITY), "none")
        augment = augmentation(s, hp, seed=self.seed) if self.augment else None
        self.class_weighting(hp)
        self._check_fits(kernels)

        inputs = x = self.inputs()
        if intensity == "equalize":
            # In a Pipeline: called directly on a symbolic tensor, Keras 3.15's Equalization
            # returns its input and cuts the functional graph.
            x = keras.layers.Pipeline([keras.layers.Equalization(value_range=(0, 255))],
                                      name="equalize")(x)
        x = keras.layers.Rescaling(1.0 / 255)(x)
        if augment is not None:
            x = augment(x)
        if intensity != "none":  # after augmentation, so exposure and contrast do not matter
            x = keras.layers.LayerNormalization(axis=(1, 2, 3), epsilon=1e-6, center=False,
                                                scale=False, name="standardize")(x)
        for f, k in zip(filters, kernels, strict=True):
            x = keras.layers.Conv2D(f, k, use_bias=not batch_norm)(x)
            if batch_norm:
                # momentum 0.9: the statistics follow the weights within ~10 steps, so an
                # epoch's validation figures (and early stopping) see the network trained
                x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.Activation("relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = (keras.layers.Flatten() if head == "flatten"
             else keras.layers.GlobalAveragePooling2D())(x)
        return self.classifier(inputs, x, how, dense_units, dropout)

    def _check_fits(self, kernels: list[int]) -> None:
        """Valid convolutions shrink the image; a stack that leaves nothing fails its trial."""
        size = self.input_shape[0]
        for k in kernels:
            size = (size - k + 1) // 2
        if size < 1:
            raise kt.errors.FailedTrialError(
                f"{len(kernels)} conv blocks with kernels {kernels} do not fit "
                f"{self.input_shape[0]}px images; this trial is skipped.")


class AugCNN(CNN):
    arch = "aug_cnn"
    augment = True
    learning_rate = 1e-4
