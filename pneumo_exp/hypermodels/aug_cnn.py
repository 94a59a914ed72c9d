"""aug_cnn: the study's final model, its CNN trained on augmented images.

Default point (the study): the cnn's default network (Conv 32 3x3, Conv 32 4x4, Conv 64
3x3, each with 2x2 max pooling; Dense 64; sigmoid) with RMSprop 1e-4, and augmentation:
rotation 15 deg, shifts 0.2, zoom 0.2, horizontal flip, brightness up to +50%. The search
adds the augmentation strengths to the cnn's space.
"""

from __future__ import annotations

from pneumo_exp.hypermodels.cnn import CNN


class AugCNN(CNN):
    arch = "aug_cnn"
    augment = True
    learning_rate = 1e-4
