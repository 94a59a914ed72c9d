"""baseline: the study's first model, the flattened image through two small Dense layers
(Dense 32, Dense 8, RMSprop 1e-3, batch 64, 50 epochs at 64x64x3). It overfits.
regularized: the baseline with an L2 penalty on its first Dense layer (the study's 0.01,
searched on a log scale from 1e-4 to 1e-1)."""

from __future__ import annotations

import keras
import keras_tuner as kt

from pneumo_exp.hypermodels.base import StudyHyperModel, training


class Baseline(StudyHyperModel):
    arch = "baseline"
    ui_params = ("units_1", "units_2")
    l2 = False  # an L2 penalty on the first Dense layer

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        units_1 = s.choice(hp, "units_1", [16, 32, 64, 128], 32)
        units_2 = s.choice(hp, "units_2", [4, 8, 16, 32], 8)
        dropout = s.float(hp, "dropout", 0.0, 0.5, 0.0, step=0.1)
        how = training(s, hp, "rmsprop", 1e-3)
        penalty = (keras.regularizers.L2(s.float(hp, "l2", 1e-4, 1e-1, 0.01, sampling="log"))
                   if self.l2 else None)
        self.class_weighting(hp)

        inputs = self.inputs()
        x = keras.layers.Rescaling(1.0 / 255)(inputs)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(units_1, activation="relu", kernel_regularizer=penalty)(x)
        if dropout:
            x = keras.layers.Dropout(dropout, seed=self.seed)(x)
        return self.classifier(inputs, x, how, units_2, dropout)


class Regularized(Baseline):
    arch = "regularized"
    ui_params = ("l2", "units_1")
    l2 = True
