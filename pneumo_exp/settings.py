"""The sections of an experiment's settings (experiments/*.yaml), each a strict pydantic
dataclass checked whenever it is built (`dataclasses.replace` too), so a bad value stops
before anything trains, as one ConfigError naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from pneumo_exp.errors import ConfigError
from pneumo_exp.grammar import read_view

# What every epoch reports on the validation set (pneumo_exp.search.callbacks), as
# val_<name>; the search's objective is one of them. spec_at_sens: the highest specificity
# whose sensitivity reaches search.sensitivity_target (exact, from the ROC).
VALIDATION_FIGURES = ("loss", "accuracy", "auc", "sensitivity", "specificity", "precision",
                      "balanced_accuracy", "spec_at_sens")
Objective = Literal[tuple(f"val_{f}" for f in VALIDATION_FIGURES)]
Positive = Annotated[int, Field(ge=1)]
Side = Annotated[int, Field(ge=8)]  # pixels of an image's side
# Strict: no bool for a number, no "3" for 3 (3 is taken for 3.0); no unknown key.
section = functools.partial(dataclass, frozen=True,
                            config=ConfigDict(strict=True, extra="forbid"))


@section
class _Section:
    """What every section shares: a failed check is one ConfigError naming the key."""

    key: ClassVar[str]  # the section's name in the files

    @model_validator(mode="wrap")
    @classmethod
    def _one_error(cls, values: Any, handler: Any) -> Any:
        try:
            return handler(values)
        except ValidationError as e:
            raise ConfigError(_message(cls, e.errors()[0])) from None


BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
          "less_than": "<"}  # pydantic's error types of Field bounds


def _message(cls: type, error: Any) -> str:
    """'data.image_size': must be greater than or equal to 8; got 0."""
    key = ".".join([cls.key, *error["loc"][:1]])
    if error["type"] == "unexpected_keyword_argument":
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        return f"unknown key '{key}'; known: {known}."
    said = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if error["type"] == "string_pattern_mismatch":  # the pattern in words
        said = "must be " + cls.__pydantic_fields__[error["loc"][0]].description
    if error["type"] in BOUNDS:  # 'must be an integer >= 1', as the files write it
        annotation = cls.__pydantic_fields__[error["loc"][0]].annotation  # float | None too
        kind = "a number" if float in (annotation, *typing.get_args(annotation)) else "an integer"
        said = f"must be {kind} {BOUNDS[error['type']]} {next(iter(error['ctx'].values())):g}"
    return f"'{key}': {said[:1].lower()}{said[1:]}; got {error['input']!r}."


@section
class DataConfig(_Section):
    key: ClassVar[str] = "data"
    root: str | None = None  # folder or .npz; None: data/chest_xray if present, else the sample
    image_size: Side = 64
    channels: Literal[1, 3] = 1  # grayscale or RGB
    validation: Literal["split", "official"] = "split"
    val_fraction: float = Field(0.1, gt=0, lt=0.5)


@section
class TrainConfig(_Section):
    """How one model trains: a trial of a search, a fold of a cross-validation."""

    key: ClassVar[str] = "train"
    epochs: Positive = 20  # at most (Hyperband's max_epochs)
    patience: Positive = 5  # EarlyStopping on the search's objective
    reduce_lr_patience: Positive | None = None  # ReduceLROnPlateau (x0.3) on it; None: off
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to 0 over the epochs
    batch_size: Positive = 32
    threads: Positive | None = 2  # TensorFlow's threads per op; None: one per core

    @field_validator("lr_schedule")
    @classmethod
    def _one_rule_for_the_rate(cls, schedule: str, info: ValidationInfo) -> str:
        if schedule != "constant" and info.data.get("reduce_lr_patience") is not None:
            raise ValueError("must be constant with a train.reduce_lr_patience (the schedule "
                             "sets the rate: set reduce_lr_patience to null)")
        return schedule


@section
class SearchConfig(_Section):
    key: ClassVar[str] = "search"
    tuner: Literal["random", "bayesian", "hyperband"] = "bayesian"
    objective: Objective = "val_auc"
    # Trials in all, screened ones included (`split`); None: screen_trials + full_trials.
    max_trials: Positive | None = 10
    seed: int = 42
    time_budget_min: float | None = Field(None, gt=0)  # minutes
    hyperband_factor: int = Field(3, ge=2)
    # Bayesian: trials before the Gaussian process proposes (trial 0, the initial points,
    # then random draws); None: Keras Tuner's 3 x the number of hyperparameters.
    num_initial_points: Positive | None = 3
    constant_epochs: Positive = 2  # a trial whose output is constant this many epochs stops
    median_stopping: Positive | None = None  # from this epoch on, stop trials below the median
    default_first: bool = True  # the first trial is the space's default point (the study's)
    # Tried first (after the default point): {hyperparameter: value}, the rest default.
    initial_points: list[dict[str, Any]] = Field(default_factory=list)
    sensitivity_target: float = Field(0.95, gt=0, lt=1)  # of the objective val_spec_at_sens
    # Multi-fidelity: screen_trials configurations judged cheaply first (at screen_image_size,
    # on screen_fraction of train, for screen_epochs), then the best full_trials of them
    # trained at full fidelity. 0: every trial at full fidelity.
    screen_trials: int = Field(0, ge=0)
    full_trials: Positive | None = Field(None, validate_default=True)  # checked if unset
    screen_image_size: Side | None = None  # None: data.image_size
    screen_fraction: float = Field(1.0, gt=0, le=1)
    screen_epochs: Positive = 3

    @field_validator("full_trials")
    @classmethod
    def _trials_counted(cls, full: int | None, info: ValidationInfo) -> int | None:
        if full is None and info.data.get("screen_trials"):
            raise ValueError("must be an integer >= 1 with search.screen_trials > 0 (the best "
                             "full_trials of the screened configurations are trained at "
                             "full fidelity)")
        if full is None and info.data.get("max_trials", 1) is None:
            raise ValueError("must be an integer >= 1 when search.max_trials is null")
        return full

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
        """(screened, full-fidelity) trials: `planned_trials` shared as screen_trials :
        full_trials, or all at full fidelity when that leaves no more to screen than to
        train (docs/searching.md, "Multi-fidelity")."""
        total = self.planned_trials
        if not self.screen_trials:
            return 0, total
        named = self.screen_trials + (self.full_trials or 0)
        full = max(1, int(total * (self.full_trials or 0) / named + 0.5))
        screen = total - full
        return (screen, full) if screen > full else (0, total)


@section
class TrackingConfig(_Section):
    key: ClassVar[str] = "tracking"
    experiment: str | None = None  # None: pneumo-exp/<arch>
    # Grad-CAM grids per trial: the k most confident errors of each kind; 0: none
    gradcam_images: int = Field(8, ge=0)


@section
class RegistryConfig(_Section):
    key: ClassVar[str] = "registry"
    model_name: str = Field("pneumonia-classifier", min_length=1)
    # the decision threshold keeps this sensitivity on validation
    min_sensitivity: float = Field(0.90, gt=0, le=1)
    bootstrap: int = Field(1000, ge=100)  # resamples for the test confidence intervals
    top: Positive = 3  # promote packages up to this many best trials as one ensemble
    # test-time augmentation: each image scored as these views, the mean kept (data/views.py)
    views: list[str] = Field(default_factory=lambda: ["original"], min_length=1)

    @field_validator("views")
    @classmethod
    def _views(cls, views: list[str]) -> list[str]:
        for view in views:
            read_view(view)  # a ValueError naming the grammar
        return views


@section
class PopulationConfig(_Section):
    """Whom the training data's patients were, so whom a version is for; the version
    carries it, and a DICOM image outside it (by its PatientAge and ViewPosition) is
    flagged or refused (serving/population.py)."""

    key: ClassVar[str] = "population"
    description: str = ""  # in words, for the model card
    min_age: float | None = None  # years; None: no bound
    max_age: float | None = None
    views: list[str] = Field(default_factory=list)  # DICOM ViewPosition values; []: any
    outside: Literal["flag", "refuse"] = "flag"  # refuse: no probability, flag: with a note

    @field_validator("max_age")
    @classmethod
    def _ordered(cls, max_age: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min_age")
        if max_age is not None and low is not None and low > max_age:
            raise ValueError(f"must be at least population.min_age ({low})")
        return max_age

    @property
    def stated(self) -> bool:
        """Whether it says whom a version is for (else the site's labels.csv may)."""
        return bool(self.description or self.views or self.min_age is not None
                    or self.max_age is not None)

    def leaves_out(self, other: PopulationConfig | None) -> bool:
        """Whether every age of `other`'s range lies outside this one's (so a DICOM image of
        one of its patients is outside): False when `other` bounds no age."""
        return other is not None and (
            (self.min_age is not None and other.max_age is not None
             and self.min_age > other.max_age)
            or (self.max_age is not None and other.min_age is not None
                and self.max_age < other.min_age))


SITE_ARCH = "site"  # a site version's search (experiments/site.yaml, hypermodels/site.py)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}$")  # it becomes the alias site-<name>


@section
class SiteConfig(_Section):
    """A site version's search (experiments/site.yaml): the registered version it starts
    from, and the site it is for."""

    key: ClassVar[str] = "site"
    base: str | None = Field(None, pattern="^models:/", description=(  # BASE=
        "a registered version, models:/NAME/VERSION or models:/NAME@ALIAS"))
    name: str | None = Field(None, pattern=SITE_NAME.pattern, description=(  # SITE=
        "letters, digits, '-' or '_' (it becomes the alias site-<name>)"))  # None: the folder's
