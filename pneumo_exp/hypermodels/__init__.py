"""One Keras Tuner hypermodel per architecture of the study, by name."""

from __future__ import annotations

from pneumo_exp.hypermodels.aug_cnn import AugCNN
from pneumo_exp.hypermodels.base import StudyHyperModel
from pneumo_exp.hypermodels.baseline import Baseline
from pneumo_exp.hypermodels.cnn import CNN
from pneumo_exp.hypermodels.regularized import Regularized
from pneumo_exp.hypermodels.transfer import Transfer

HYPERMODELS: dict[str, type[StudyHyperModel]] = {
    cls.arch: cls for cls in (Baseline, Regularized, CNN, AugCNN, Transfer)
}

__all__ = ["HYPERMODELS", "StudyHyperModel"]
