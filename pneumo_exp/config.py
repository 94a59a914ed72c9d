"""Constants, path defaults and the experiment configuration (experiments/*.yaml): the
defaults deep-merged with the files and overrides `load_config` names, every key checked
(settings.py) and a bad one reported with its dotted name and its value.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pneumo_exp.errors import ConfigError
from pneumo_exp.grammar import check_space
from pneumo_exp.settings import (
    DataConfig,
    PopulationConfig,
    RegistryConfig,
    SearchConfig,
    SiteConfig,
    TrackingConfig,
    TrainConfig,
)

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


def tracking_uri() -> str:
    """MLflow store: $MLFLOW_TRACKING_URI, else SQLite + artifacts under ./mlruns/."""
    return (os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{MLRUNS_DIR.resolve() / 'mlflow.db'}")


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
    site: SiteConfig = field(default_factory=SiteConfig)

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
        if not any(d["site"].values()):  # a site's search is named by its base and site
            d.pop("site")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


BUDGETS = ("max_trials", "time_budget_min")  # a search with larger budgets is the same search
_SECTIONS = {cls.key: cls for cls in (DataConfig, SearchConfig, TrainConfig, TrackingConfig,
                                       RegistryConfig, PopulationConfig, SiteConfig)}


def architectures() -> list[str]:
    """Names of the architectures that have an experiment file."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem != "defaults")


def dataset_root(root: str | None) -> Path:
    """The configured root; else data/chest_xray if present; else the bundled sample."""
    if root:
        return Path(root).expanduser()
    return FULL_DATA_DIR if FULL_DATA_DIR.is_dir() else SAMPLE_DIR


def load_config(arch: str, overrides: dict[str, Any] | None = None,
                experiments_dir: Path = EXPERIMENTS_DIR) -> ExperimentConfig:
    """defaults.yaml <- the file <arch>.yaml extends, if any <- <arch>.yaml <- the dataset
    folder's pneumo-exp.yaml, if any <- overrides ({"train.epochs": 2, ...})."""
    merged = _read_yaml(experiments_dir / "defaults.yaml")
    for path in _experiment_files(arch, experiments_dir):
        _deep_merge(merged, _read_yaml(path))
    overrides = overrides or {}
    root = overrides.get("data.root", (merged.get("data") or {}).get("root"))
    # the dataset folder's own settings, if any (a root that is no string: DataConfig says)
    settings = dataset_root(root if isinstance(root, str) else None) / DATASET_SETTINGS
    if settings.is_file():
        _deep_merge(merged, _read_yaml(settings))
    for dotted, value in overrides.items():  # "train.epochs": 2 as {"train": {"epochs": 2}}
        _deep_merge(merged, functools.reduce(lambda inner, part: {part: inner},
                                             reversed(dotted.split(".")), value))
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
                          "population, site.")
    sections: dict[str, Any] = {}
    for name in (*_SECTIONS, "model", "space"):
        values = merged.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"'{name}' must be a mapping of keys; got {values!r}.")
        # each section checks its keys (settings.py)
        sections[name] = _SECTIONS[name](**values) if name in _SECTIONS else values
    check_space(sections["space"])
    return ExperimentConfig(arch=arch, **sections)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections; got {type(loaded).__name__}.")
    return loaded


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "space":
            _deep_merge(base[key], value)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # a space entry replaces the default whole
        else:
            base[key] = value
