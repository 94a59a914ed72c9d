"""Constants, path defaults and the experiment configuration (experiments/*.yaml).

Every default lives here or in experiments/defaults.yaml. A configuration is the
defaults, deep-merged with experiments/<arch>.yaml, then with command-line overrides;
every key is checked, and a bad one is reported with its dotted name and its value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pneumo_exp.errors import ConfigError
from pneumo_exp.grammar import check_space, read_view

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
SPLITS = ("train", "val", "test")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
FULL_DATA_DIR = Path("data") / "chest_xray"  # used when present and no DATA is given

# Generated state, relative to the working directory (the repository for make targets).
STATE_DIR = Path(os.environ.get("PNEUMO_EXP_HOME", ".pneumo"))
CACHE_DIR = STATE_DIR / "cache"  # decoded images
PACS_DIR = STATE_DIR / "dicomweb"  # instances pulled from a PACS, de-identified
TUNER_DIR = STATE_DIR / "tuner"
MLRUNS_DIR = Path("mlruns")  # SQLite database + artifacts: the Model Registry works locally
DATASET_SETTINGS = "pneumo-exp.yaml"  # settings that fit a dataset folder, over experiments/
LOCALHOST = "127.0.0.1"  # servers bind it unless told otherwise
UI_PORT, SERVE_PORT = 5000, 5001  # the MLflow UI (and tracking server); a served model

TUNER_NAMES = ("random", "bayesian", "hyperband")
# What every epoch reports on the validation set (pneumo_exp.search.callbacks), as
# val_<name>; the search's objective is one of them. spec_at_sens: the highest specificity
# whose sensitivity reaches search.sensitivity_target (exact, from the ROC).
VALIDATION_FIGURES = ("loss", "accuracy", "auc", "sensitivity", "specificity", "precision",
                      "balanced_accuracy", "spec_at_sens")
VALIDATION_MODES = ("split", "official")
LR_SCHEDULES = ("constant", "cosine")  # train.lr_schedule: the rate per epoch
def tracking_uri() -> str:
    """MLflow store: $MLFLOW_TRACKING_URI, else SQLite + artifacts under ./mlruns/."""
    return (os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{MLRUNS_DIR.resolve() / 'mlflow.db'}")


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


@dataclass(frozen=True)
class ExperimentConfig:
    arch: str
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)  # fixed arguments of the hypermodel
    space: dict[str, Any] = field(default_factory=dict)  # overrides of its search space
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"pneumo-exp/{self.arch}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Identity of a search: everything but the budgets, so a larger budget extends it
        (and the settings nothing reads: the screening's when there is none). A search that
        screens is named by its split too: its stages number their trials after it, so
        another MAX_TRIALS is another search, not an extension."""
        d = self.to_dict()
        search = d["search"]
        screened = self.search.split[0]
        unused = {*BUDGETS, *(k for k in search if not screened
                              and (k.startswith("screen_") or k == "full_trials"))}
        if search["objective"] != "val_spec_at_sens":
            unused.add("sensitivity_target")
        d["search"] = {k: v for k, v in search.items() if k not in unused}
        if screened:
            d["search"]["split"] = list(self.search.split)
        d.pop("registry")
        d.pop("population")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


BUDGETS = ("max_trials", "time_budget_min")  # a search with larger budgets is the same search
_SECTIONS = {"data": DataConfig, "search": SearchConfig, "train": TrainConfig,
             "tracking": TrackingConfig, "registry": RegistryConfig,
             "population": PopulationConfig}


def architectures() -> list[str]:
    """Names of the architectures that have an experiment file."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem != "defaults")


def dataset_root(root: str | None) -> Path:
    """The configured root; else data/chest_xray if present; else the bundled sample."""
    if root:
        return Path(root).expanduser()
    return FULL_DATA_DIR if FULL_DATA_DIR.is_dir() else SAMPLE_DIR


def dataset_settings(root: str | None) -> Path | None:
    """A dataset folder's own settings file, if it has one (the bundled sample does)."""
    path = dataset_root(root) / DATASET_SETTINGS
    return path if path.is_file() else None


def load_config(arch: str, overrides: dict[str, Any] | None = None,
                experiments_dir: Path = EXPERIMENTS_DIR) -> ExperimentConfig:
    """defaults.yaml <- the file <arch>.yaml extends, if any <- <arch>.yaml <- the dataset
    folder's pneumo-exp.yaml, if any <- overrides ({"train.epochs": 2, ...})."""
    merged = _read_yaml(experiments_dir / "defaults.yaml")
    for path in _experiment_files(arch, experiments_dir):
        _deep_merge(merged, _read_yaml(path), source=str(path))
    overrides = overrides or {}
    root = overrides.get("data.root", (merged.get("data") or {}).get("root"))
    settings = dataset_settings(root)
    if settings is not None:
        _deep_merge(merged, _read_yaml(settings), source=str(settings))
    for dotted, value in overrides.items():
        _deep_merge(merged, _nest(dotted, value), source="the command line")
    return _build(arch, merged)


def _experiment_files(arch: str, experiments_dir: Path) -> list[Path]:
    """experiments/<arch>.yaml, after the file its `extends:` names (and so on)."""
    files: list[Path] = []
    name: str | None = arch
    while name:
        path = experiments_dir / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(architectures()) or "none"
            what = f"unknown architecture '{name}'" if name == arch else (
                f"{files[0].name} extends '{name}'")
            raise ConfigError(f"{what}: there is no {path}. Known: {known}.")
        if path in files:
            raise ConfigError(f"{path} extends itself (through {files[-1].name}).")
        files.insert(0, path)
        name = _read_yaml(path).get("extends")
    return files


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """The configuration a run logged (its config.yaml), back as an ExperimentConfig. A
    screened search logged before full_trials existed counted its full-fidelity trials in
    max_trials: they become full_trials, and max_trials the two stages' sum."""
    d = dict(d)
    search = dict(d.get("search") or {})
    if search.get("screen_trials") and "full_trials" not in search:
        search["full_trials"] = search.get("max_trials")
        search["max_trials"] = search["screen_trials"] + (search["full_trials"] or 0)
        d["search"] = search
    return _build(d.pop("arch"), d)


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, such as train.epochs=3; got '{text}'.")
    return key.strip(), yaml.safe_load(raw)


def _build(arch: str, merged: dict[str, Any]) -> ExperimentConfig:
    merged.pop("extends", None)
    unknown = set(merged) - {*_SECTIONS, "model", "space"}
    if unknown:
        raise ConfigError(f"unknown configuration section '{sorted(unknown)[0]}'; known: "
                          "data, search, train, model, space, tracking, registry, "
                          "population.")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = merged.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"'{name}' must be a mapping of keys; got {values!r}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown key '{name}.{key}'; known: {', '.join(fields)}.")
            values[key] = _coerce(f"{name}.{key}", value, fields[key].type)
        sections[name] = cls(**values)
    for name in ("model", "space"):
        value = merged.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a mapping of keys; got {value!r}.")
        sections[name] = value
    check_space(sections["space"])
    return ExperimentConfig(arch=arch, **sections)


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check a YAML value against the field's annotation, accepting 3 for a float."""
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"'{key}' needs a value; got null.")
    if annotation.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"'{key}' must be an integer; got {value!r}.")
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"'{key}' must be a number; got {value!r}.")
        return float(value)
    if annotation.startswith("str") and not isinstance(value, str):
        raise ConfigError(f"'{key}' must be a string; got {value!r}.")
    if annotation.startswith("bool") and not isinstance(value, bool):
        raise ConfigError(f"'{key}' must be true or false; got {value!r}.")
    return value


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' must be {expected}; got {value!r}.")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections; got {type(loaded).__name__}.")
    return loaded


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], source: str) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "space":
            _deep_merge(base[key], value, source)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # a space entry replaces the default whole
        else:
            base[key] = value
