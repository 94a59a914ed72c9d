"""One Keras Tuner hypermodel per architecture of the study, by name."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.errors import ConfigError
from pneumo_exp.hypermodels.base import StudyHyperModel
from pneumo_exp.hypermodels.baseline import Baseline, Regularized
from pneumo_exp.hypermodels.cnn import CNN, AugCNN
from pneumo_exp.hypermodels.site import Site
from pneumo_exp.hypermodels.transfer import Transfer

HYPERMODELS: dict[str, type[StudyHyperModel]] = {
    cls.arch: cls for cls in (Baseline, Regularized, CNN, AugCNN, Transfer, Site)
}


def build_hypermodel(cfg: ExperimentConfig, train_labels: np.ndarray,
                     **context: Any) -> StudyHyperModel:
    """The configured architecture, with balanced class weights from the training labels;
    `context`: what a site search brings from the registry (hypermodels/site.py)."""
    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=train_labels)
    try:
        return HYPERMODELS[cfg.arch](
            input_shape=(cfg.data.image_size, cfg.data.image_size, cfg.data.channels),
            space=cfg.space, class_weight={0: float(weights[0]), 1: float(weights[1])},
            seed=cfg.search.seed, **cfg.model, **context)
    except KeyError as e:
        raise ConfigError(f"no hypermodel for architecture '{cfg.arch}'; known: "
                          f"{', '.join(HYPERMODELS)}.") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.arch}: {e} (check 'model' and 'data' in "
                          f"experiments/{cfg.arch}.yaml).") from e


__all__ = ["HYPERMODELS", "StudyHyperModel", "build_hypermodel"]
