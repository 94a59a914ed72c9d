"""aug_cnn: the study's final model, a 3-block CNN trained on augmented images.

Default point (the study): Conv 32 3x3, Conv 32 4x4, Conv 64 3x3, each with 2x2 max
pooling; Dense 64; sigmoid; RMSprop 1e-4; rotation 15 deg, shifts 0.2, zoom 0.2,
horizontal flip, brightness up to +50%.
"""

from __future__ import annotations

import keras
import keras_tuner as kt

from pneumo_exp.hypermodels.base import (
    StudyHyperModel,
    augmentation,
    compile_binary,
    optimizer_and_rate,
)

KERNELS = (3, 4, 3)
STUDY_FILTERS = (32, 32, 64)


class AugCNN(StudyHyperModel):
    min_image_size = 32  # three valid convolutions and poolings need room

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        filters = [s.choice(hp, f"filters_{i + 1}", [16, 32, 64, 128], f)
                   for i, f in enumerate(STUDY_FILTERS)]
        dense_units = s.choice(hp, "dense_units", [32, 64, 128, 256], 64)
        dropout = s.float(hp, "dropout", 0.0, 0.5, 0.0, step=0.1)
        optimizer, learning_rate = optimizer_and_rate(s, hp, "rmsprop", 1e-4)
        augment = augmentation(s, hp, seed=self.seed)
        self.class_weighting(hp)

        inputs = self.inputs()
        x = keras.layers.Rescaling(1.0 / 255)(inputs)
        x = augment(x)
        for f, k in zip(filters, KERNELS, strict=True):
            x = keras.layers.Conv2D(f, k, activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(dense_units, activation="relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, seed=self.seed)(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
        return compile_binary(keras.Model(inputs, outputs, name="aug_cnn"), optimizer,
                              learning_rate)
