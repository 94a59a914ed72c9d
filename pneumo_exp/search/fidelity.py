"""Multi-fidelity: screen many configurations cheaply, then train the best fully, each stage
a Keras Tuner search of its own (docs/searching.md, "Multi-fidelity"). Trials are numbered
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
        return {f"{FIDELITY_PARAM}{name}": getattr(self, name)
                for name in ("image_size", "train_fraction", "epochs")}


def stages(cfg: ExperimentConfig) -> list[Stage]:
    """The stages of a search: its split of max_trials, the screen's epochs capped by
    train.epochs (EPOCHS=)."""
    s, full_size = cfg.search, cfg.data.image_size
    screened, trained = s.split
    full = Stage(FULL, trained, screened, full_size, 1.0, cfg.train.epochs)
    if not screened:
        return [full]
    return [Stage(SCREEN, screened, 0, s.screen_image_size or full_size,
                  s.screen_fraction, min(s.screen_epochs, cfg.train.epochs)), full]


def describe_plan(cfg: ExperimentConfig) -> str:
    """What a search will run, in a sentence for the console."""
    plan, s = stages(cfg), cfg.search
    full = plan[-1]
    at = f"at {full.image_size} px for up to {full.epochs} epoch{'s' * (full.epochs != 1)}"
    if len(plan) == 1:
        why = (f"; MAX_TRIALS={s.planned_trials} leaves too few to screen (the configured "
               f"split is {s.screen_trials} screened + {s.full_trials} full)"
               if s.screen_trials else "")
        return f"{full.trials} trial{'s' * (full.trials != 1)} {at}, all at full fidelity{why}."
    screen = plan[0]
    best = f"{full.trials} trained" if full.trials > 1 else "one trained"
    return (f"{s.planned_trials} trials: {screen.trials} configurations screened at "
            f"{screen.image_size} px on {screen.train_fraction:.0%} of train for "
            f"{screen.epochs} epoch{'s' * (screen.epochs != 1)}, then the best {best} "
            f"{at} on all of train (MAX_TRIALS keeps the configured "
            f"{s.screen_trials} : {s.full_trials} split).")


def stage_config(cfg: ExperimentConfig, stage: Stage,
                 screened: list[dict[str, Any]] | None = None) -> ExperimentConfig:
    """The configuration one stage runs: its resolution, epochs and trial budget. The full
    stage after a screening trains the screened configurations it is given, best first."""
    data = dataclasses.replace(cfg.data, image_size=stage.image_size)
    train = dataclasses.replace(cfg.train, epochs=stage.epochs)
    search = dataclasses.replace(cfg.search, max_trials=stage.trials, screen_trials=0,
                                 full_trials=None)
    if stage.full and stage.offset:  # the screening already chose them
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
