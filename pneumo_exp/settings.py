"""The sections of an experiment's settings (experiments/*.yaml): what each may hold, its
default, and its checks, which run when the section is built, so a bad value stops with
its key before anything trains. config.py reads the files into them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pneumo_exp.errors import ConfigError
from pneumo_exp.grammar import read_view

TUNER_NAMES = ("random", "bayesian", "hyperband")
# What every epoch reports on the validation set (pneumo_exp.search.callbacks), as
# val_<name>; the search's objective is one of them. spec_at_sens: the highest specificity
# whose sensitivity reaches search.sensitivity_target (exact, from the ROC).
VALIDATION_FIGURES = ("loss", "accuracy", "auc", "sensitivity", "specificity", "precision",
                      "balanced_accuracy", "spec_at_sens")
VALIDATION_MODES = ("split", "official")
LR_SCHEDULES = ("constant", "cosine")  # train.lr_schedule: the rate per epoch


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # folder or .npz; None: data/chest_xray if present, else the sample
    image_size: int = 64
    channels: int = 1
    validation: str = "split"
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        _check(self.channels in (1, 3), "data.channels", self.channels, "1 (grayscale) or 3 (RGB)")
        _check(self.validation in VALIDATION_MODES, "data.validation", self.validation,
               " or ".join(VALIDATION_MODES))
        _check(0 < self.val_fraction < 0.5, "data.val_fraction", self.val_fraction,
               "a fraction between 0 and 0.5")


@dataclass(frozen=True)
class TrainConfig:
    """How one model trains: a trial of a search, a fold of a cross-validation."""

    epochs: int = 20  # at most (Hyperband's max_epochs)
    patience: int = 5  # EarlyStopping on the search's objective
    reduce_lr_patience: int | None = None  # ReduceLROnPlateau (x0.3) on it; None: off
    lr_schedule: str = "constant"  # or cosine: decays to 0 over the epochs
    batch_size: int = 32
    threads: int | None = 2  # TensorFlow's threads per op; None: one per core

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.threads is None or self.threads >= 1, "train.threads", self.threads,
               "an integer >= 1, or null")
        _check(self.patience >= 1, "train.patience", self.patience, "an integer >= 1")
        _check(self.reduce_lr_patience is None or self.reduce_lr_patience >= 1,
               "train.reduce_lr_patience", self.reduce_lr_patience, "an integer >= 1, or null")
        _check(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", self.lr_schedule,
               " or ".join(LR_SCHEDULES))
        _check(self.lr_schedule == "constant" or self.reduce_lr_patience is None,
               "train.reduce_lr_patience", self.reduce_lr_patience,
               "null with a cosine train.lr_schedule (the schedule sets the rate)")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class SearchConfig:
    tuner: str = "bayesian"
    objective: str = "val_auc"
    # Trials in all, screened ones included (`split`); None: screen_trials + full_trials.
    max_trials: int | None = 10
    seed: int = 42
    time_budget_min: float | None = None
    hyperband_factor: int = 3
    # Bayesian: trials before the Gaussian process proposes (trial 0, the initial points,
    # then random draws); None: Keras Tuner's 3 x the number of hyperparameters.
    num_initial_points: int | None = 3
    constant_epochs: int = 2  # a trial whose output is constant this many epochs stops
    median_stopping: int | None = None  # from this epoch on, stop trials below the median
    default_first: bool = True  # the first trial is the space's default point (the study's)
    # Tried first (after the default point): {hyperparameter: value}, the rest default.
    initial_points: list[dict[str, Any]] = field(default_factory=list)
    sensitivity_target: float = 0.95  # of the objective val_spec_at_sens
    # Multi-fidelity: screen_trials configurations judged cheaply first (at screen_image_size,
    # on screen_fraction of train, for screen_epochs), then the best full_trials of them
    # trained at full fidelity. 0: every trial at full fidelity.
    screen_trials: int = 0
    full_trials: int | None = None
    screen_image_size: int | None = None  # None: data.image_size
    screen_fraction: float = 1.0
    screen_epochs: int = 3

    def __post_init__(self) -> None:
        _check(self.tuner in TUNER_NAMES, "search.tuner", self.tuner, " | ".join(TUNER_NAMES))
        _check(self.objective in {f"val_{f}" for f in VALIDATION_FIGURES}, "search.objective",
               self.objective, "one of " + ", ".join(f"val_{f}" for f in VALIDATION_FIGURES))
        _check(self.max_trials is None or self.max_trials >= 1, "search.max_trials",
               self.max_trials, "an integer >= 1 (trials in all, screened ones included)")
        _check(self.full_trials is None or self.full_trials >= 1, "search.full_trials",
               self.full_trials, "an integer >= 1, or null")
        _check(not self.screen_trials or self.full_trials is not None, "search.full_trials",
               self.full_trials, "an integer >= 1 with search.screen_trials > 0 (the best "
               "full_trials of the screened configurations are trained at full fidelity)")
        _check(self.max_trials is not None or (self.full_trials or self.screen_trials),
               "search.max_trials", self.max_trials,
               "an integer >= 1 when search.full_trials is null")
        _check(self.time_budget_min is None or self.time_budget_min > 0,
               "search.time_budget_min", self.time_budget_min, "minutes > 0, or null")
        _check(self.hyperband_factor >= 2, "search.hyperband_factor", self.hyperband_factor,
               "an integer >= 2")
        _check(self.num_initial_points is None or self.num_initial_points >= 1,
               "search.num_initial_points", self.num_initial_points, "an integer >= 1, or null")
        _check(self.constant_epochs >= 1, "search.constant_epochs", self.constant_epochs,
               "an integer >= 1")
        _check(self.median_stopping is None or self.median_stopping >= 1,
               "search.median_stopping", self.median_stopping, "an integer >= 1, or null")
        _check(isinstance(self.initial_points, list)
               and all(isinstance(p, dict) for p in self.initial_points),
               "search.initial_points", self.initial_points,
               "a list of {hyperparameter: value} mappings")
        _check(0 < self.sensitivity_target < 1, "search.sensitivity_target",
               self.sensitivity_target, "a fraction in (0, 1)")
        _check(self.screen_trials >= 0, "search.screen_trials", self.screen_trials,
               "an integer >= 0 (0: no screening)")
        _check(self.screen_image_size is None or self.screen_image_size >= 8,
               "search.screen_image_size", self.screen_image_size, "an integer >= 8, or null")
        _check(0 < self.screen_fraction <= 1, "search.screen_fraction", self.screen_fraction,
               "a fraction in (0, 1]")
        _check(self.screen_epochs >= 1, "search.screen_epochs", self.screen_epochs,
               "an integer >= 1")

    @property
    def direction(self) -> str:
        return "min" if "loss" in self.objective else "max"

    @property
    def planned_trials(self) -> int:
        """Trials in all, screened and full-fidelity together: max_trials, or the stages'
        sum when it is null."""
        if self.max_trials is not None:
            return self.max_trials
        return self.screen_trials + (self.full_trials or 0)

    @property
    def split(self) -> tuple[int, int]:
        """(screened, full-fidelity) trials. A search runs `planned_trials` in all; with
        screening, they are shared between the stages as screen_trials : full_trials (at
        least 1 at full fidelity), so MAX_TRIALS=30 doubles aug_cnn's 12 + 3 to 24 + 6; when
        that leaves no more to screen than to train, screening would choose nothing, and
        every trial runs at full fidelity (MAX_TRIALS=2: 2 full trials)."""
        total = self.planned_trials
        if not self.screen_trials:
            return 0, total
        named = self.screen_trials + (self.full_trials or 0)
        full = max(1, int(total * (self.full_trials or 0) / named + 0.5))
        screen = total - full
        return (screen, full) if screen > full else (0, total)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str | None = None  # None: pneumo-exp/<arch>
    gradcam_images: int = 8  # Grad-CAM grids per trial: the k most confident errors of each kind

    def __post_init__(self) -> None:
        _check(self.gradcam_images >= 0, "tracking.gradcam_images", self.gradcam_images,
               "an integer >= 0 (0: no Grad-CAM grids)")


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "pneumonia-classifier"
    min_sensitivity: float = 0.90  # the decision threshold keeps this sensitivity on validation
    bootstrap: int = 1000  # resamples for the test confidence intervals
    top: int = 3  # promote packages up to this many best trials as one ensemble
    # test-time augmentation: each image scored as these views, the mean kept (data/views.py)
    views: list[str] = field(default_factory=lambda: ["original"])

    def __post_init__(self) -> None:
        _check(bool(self.model_name), "registry.model_name", self.model_name, "a name")
        _check(self.top >= 1, "registry.top", self.top, "an integer >= 1")
        _check(0 < self.min_sensitivity <= 1, "registry.min_sensitivity", self.min_sensitivity,
               "a fraction in (0, 1]")
        _check(self.bootstrap >= 100, "registry.bootstrap", self.bootstrap, "an integer >= 100")
        _check(isinstance(self.views, list) and bool(self.views)
               and all(isinstance(v, str) for v in self.views), "registry.views", self.views,
               "a list of views, e.g. [original, crop 0.9] (pneumo_exp/data/views.py)")
        for view in self.views:
            try:
                read_view(view)
            except ValueError as e:
                raise ConfigError(f"'registry.views': {e}.") from None


OUTSIDE_POLICIES = ("flag", "refuse")  # population.outside


@dataclass(frozen=True)
class PopulationConfig:
    """Whom the training data's patients were, so whom a version is for; the version
    carries it, and a DICOM image outside it (by its PatientAge and ViewPosition) is
    flagged or refused (serving/population.py)."""

    description: str = ""  # in words, for the model card
    min_age: float | None = None  # years; None: no bound
    max_age: float | None = None
    views: list[str] = field(default_factory=list)  # DICOM ViewPosition values; []: any
    outside: str = "flag"  # flag: a probability and a note; refuse: no probability

    def __post_init__(self) -> None:
        _check(self.outside in OUTSIDE_POLICIES, "population.outside", self.outside,
               " or ".join(OUTSIDE_POLICIES))
        _check(isinstance(self.views, list) and all(isinstance(v, str) for v in self.views),
               "population.views", self.views, "a list of DICOM ViewPosition values, e.g. "
               "[PA, AP]")
        _check(self.min_age is None or self.max_age is None or self.min_age <= self.max_age,
               "population.min_age", self.min_age, f"at most population.max_age "
               f"({self.max_age})")


SITE_ARCH = "site"  # a site version's search (experiments/site.yaml, hypermodels/site.py)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}$")  # it becomes the alias site-<name>


@dataclass(frozen=True)
class SiteConfig:
    """A site version's search (experiments/site.yaml): the registered version it starts
    from, and the site it is for."""

    base: str | None = None  # models:/NAME/VERSION or models:/NAME@ALIAS (BASE=)
    name: str | None = None  # SITE=: the alias site-<name>; None: the data folder's name

    def __post_init__(self) -> None:
        _check(self.base is None or self.base.startswith("models:/"), "site.base", self.base,
               "a registered version, models:/NAME/VERSION or models:/NAME@ALIAS")
        _check(self.name is None or bool(SITE_NAME.match(self.name)), "site.name", self.name,
               "letters, digits, '-' or '_' (it becomes the alias site-<name>)")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' must be {expected}; got {value!r}.")
