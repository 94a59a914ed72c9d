"""aug_cnn: the study's final model, its CNN trained on augmented images; the search adds
the augmentation strengths to the cnn's space (docs/searching.md, "Architectures")."""

from __future__ import annotations

from pneumo_exp.hypermodels.cnn import CNN


class AugCNN(CNN):
    arch = "aug_cnn"
    augment = True
    learning_rate = 1e-4
