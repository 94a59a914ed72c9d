"""regularized: the baseline with an L2 penalty on its first Dense layer.

Default point (the study): L2 0.01; searched on a log scale from 1e-4 to 1e-1.
"""

from __future__ import annotations

import keras
import keras_tuner as kt

from pneumo_exp.hypermodels.baseline import Baseline


class Regularized(Baseline):
    arch = "regularized"
    ui_params = ("l2", "units_1")

    def first_layer_penalty(self, hp: kt.HyperParameters) -> keras.regularizers.Regularizer:
        return keras.regularizers.L2(self.space.float(hp, "l2", 1e-4, 1e-1, 0.01,
                                                      sampling="log"))
