"""One Keras Tuner hypermodel per architecture of the study, by name."""

from __future__ import annotations

from pneumo_exp.hypermodels.aug_cnn import AugCNN
from pneumo_exp.hypermodels.base import StudyHyperModel

HYPERMODELS: dict[str, type[StudyHyperModel]] = {
    "aug_cnn": AugCNN,
}
