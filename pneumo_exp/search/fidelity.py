"""Multi-fidelity: judge many configurations cheaply, train the promising ones fully.

A search with `search.screen_trials` > 0 runs two stages, each a Keras Tuner search of its
own: the screening stage judges `screen_trials` configurations proposed by the configured
tuner at a lower resolution, on a patient-grouped part of train and for a few epochs; the
full stage then trains the best `max_trials` of them (by the screened objective) at full
fidelity. Only full-fidelity trials are candidates for promotion. Trials are numbered
through both stages, so trial i trains with seed + i however the search is cut and resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.split import validation_split
from pneumo_exp.tracking.names import FIDELITY_PARAM, FULL, SCREEN


@dataclass(frozen=True)
class Stage:
    name: str  # SCREEN or FULL
    trials: int  # planned trials of the stage
    offset: int  # the number of its first trial in the search
    image_size: int
    train_fraction: float
    epochs: int

    @property
    def full(self) -> bool:
        """Full fidelity: its trials log their model and Grad-CAM grids, and may be
        promoted."""
        return self.name == FULL

    @property
    def params(self) -> dict[str, Any]:
        """What each of its trial runs records of the fidelity."""
        return {f"{FIDELITY_PARAM}image_size": self.image_size,
                f"{FIDELITY_PARAM}train_fraction": self.train_fraction,
                f"{FIDELITY_PARAM}epochs": self.epochs}

    def folder(self, multi: bool) -> str:
        """Keras Tuner's project folder of the stage, under the search's."""
        return self.name if multi else ""


def stages(cfg: ExperimentConfig) -> list[Stage]:
    s, full_size = cfg.search, cfg.data.image_size
    full = Stage(FULL, s.max_trials, s.screen_trials, full_size, 1.0, cfg.train.epochs)
    if not s.screen_trials:
        return [full]
    return [Stage(SCREEN, s.screen_trials, 0, s.screen_image_size or full_size,
                  s.screen_fraction, s.screen_epochs), full]


def stage_config(cfg: ExperimentConfig, stage: Stage,
                 screened: list[dict[str, Any]] | None = None) -> ExperimentConfig:
    """The configuration one stage runs: its resolution, epochs and trial budget. The full
    stage after a screening trains the screened configurations it is given, best first."""
    data = dataclasses.replace(cfg.data, image_size=stage.image_size)
    train = dataclasses.replace(cfg.train, epochs=stage.epochs)
    search = dataclasses.replace(cfg.search, max_trials=stage.trials)
    if stage.full and cfg.search.screen_trials:  # the screening already chose them
        search = dataclasses.replace(search, median_stopping=None)
    if screened is not None:
        search = dataclasses.replace(search, tuner="random", default_first=False,
                                     initial_points=screened)
    return dataclasses.replace(cfg, data=data, train=train, search=search)


def train_part(train: LabeledImages, fraction: float, seed: int) -> LabeledImages:
    """About `fraction` of the training images, whole patients, the class ratio kept."""
    if fraction >= 1:
        return train
    _, part = validation_split(train.labels, train.groups, fraction, seed)
    return train.subset(part)
