"""What a registered version carries besides its networks, defined once: the pyfunc model's
config (`VersionContract`) and its arrays (.npz artifacts beside it); docs/architecture.md,
"A prediction" and "A field of a version"."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pneumo_exp.config import EXPERIMENTS_DIR, PopulationConfig
from pneumo_exp.data.images import Preprocessing
from pneumo_exp.data.views import ORIGINAL
from pneumo_exp.evaluation.report import Proportion, Validated
from pneumo_exp.serving.batch_norm import MIN_ADAPTATION_IMAGES
from pneumo_exp.serving.features import FeatureReference
from pneumo_exp.tracking.names import (
    TAG_MIN_SENSITIVITY,
    TAG_TEMPERATURE,
    TAG_THRESHOLD,
    TAG_VALIDATED,
    figure_tag,
)

SCHEMA = 2  # 1: the flat config of versions registered before the contract


@functools.cache
def training_population() -> PopulationConfig:
    """Whom a version registered before versions carried it is for: the patients of the
    data every version was then trained on, Kermany's children, as experiments/defaults.yaml
    states them."""
    defaults = yaml.safe_load((EXPERIMENTS_DIR / "defaults.yaml").read_text())
    return PopulationConfig(**defaults["population"])
SHIFT_LIMIT = "shift_limit"  # reference: the per-image check before feature references
FEATURE_ARTIFACTS = {"features": "feature_reference",  # field -> artifact name
                     "features_adapted": "feature_reference_adapted"}


@dataclass(frozen=True)
class VersionContract:
    """A packaged version's settings. `members` are (image size, channels), one per Keras
    file of the version, in order."""

    members: tuple[Preprocessing, ...]
    threshold: float
    temperature: float = 1.0
    views: tuple[str, ...] = (ORIGINAL,)
    min_sensitivity: float | None = None  # the validation sensitivity the threshold keeps
    validated: Mapping[str, tuple[int, int]] | None = None  # {sensitivity, specificity}:
    # (hits, total) on validation at the threshold
    reference: Mapping[str, Any] = field(default_factory=dict)  # validation's scores
    features: FeatureReference | None = field(default=None, compare=False)  # as registered
    features_adapted: FeatureReference | None = field(default=None, compare=False)  # the
    # network adapted to validation (what a site adapted to is compared with)
    population: PopulationConfig | None = None  # whom it is for (serving/population.py)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a version has at least one member")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1]; got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        """The pyfunc model's config (JSON-able)."""
        return {"schema": SCHEMA,
                "members": [{"image_size": s, "channels": c} for s, c in self.members],
                "threshold": float(self.threshold), "temperature": float(self.temperature),
                "views": list(self.views), "min_sensitivity": self.min_sensitivity,
                "validated": ({k: list(v) for k, v in self.validated.items()}
                              if self.validated else None),
                "reference": dict(self.reference),
                "features": [name for name in FEATURE_ARTIFACTS if getattr(self, name)],
                "population": asdict(self.population) if self.population else None}

    def artifact_files(self, folder: Path) -> dict[str, str]:
        """The arrays of the contract written into `folder`, by artifact name."""
        files = {}
        for name, artifact in FEATURE_ARTIFACTS.items():
            if (found := getattr(self, name)) is not None:
                path = folder / f"{artifact}.npz"
                path.write_bytes(found.to_bytes())
                files[artifact] = str(path)
        return files

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                  artifacts: Mapping[str, str] | None = None) -> VersionContract:
        """A version's contract from its config and, for its arrays, its `artifacts` (local
        paths by name; without them the arrays are left out); for a version registered
        before the contract, the figures it kept in its registry `tags` fill what its
        config lacks."""
        tags, artifacts = tags or {}, artifacts or {}
        arrays = {name: FeatureReference.load(artifacts[artifact])
                  for name, artifact in FEATURE_ARTIFACTS.items()
                  if name in (config.get("features") or []) and artifact in artifacts}
        validated, min_sensitivity = (
            config.get(k) if config.get(k) is not None or tag not in tags else json.loads(tags[tag])
            for k, tag in (("validated", TAG_VALIDATED), ("min_sensitivity", TAG_MIN_SENSITIVITY)))
        return cls(
            members=tuple((int(m["image_size"]), int(m["channels"]))
                          for m in config["members"]),
            threshold=float(config["threshold"]),
            temperature=float(config.get("temperature", 1.0)),
            views=tuple(config.get("views") or [ORIGINAL]),
            min_sensitivity=None if min_sensitivity is None else float(min_sensitivity),
            validated=({k: (int(v[0]), int(v[1])) for k, v in validated.items()}
                       if validated else None),
            reference=dict(config.get("reference") or {}), **arrays,
            population=(PopulationConfig(**config["population"])
                        if config.get("population") else training_population()),
            schema=int(config.get("schema", 1)))

    def missing(self, adaptable: bool) -> list[str]:
        """What a version must carry for its checks and this contract lacks: whom it is for,
        its views, validation's features as registered, and as adapted when its members can
        be adapted to validation (`adaptable`: they have batch normalization) and validation
        holds enough images to adapt to."""
        lacking = [what for what, found in (("a population", self.population),
                                            ("views", self.views),
                                            ("the feature reference", self.features)) if not found]
        if (adaptable and self.features is not None and self.features_adapted is None
                and len(self.features.scores) >= MIN_ADAPTATION_IMAGES):
            lacking.append("the adapted feature reference")
        return lacking

    def with_changes(self, **changes: Any) -> VersionContract:
        """A copy with `changes` (a site version changes what it changes, keeps the rest)."""
        return replace(self, schema=SCHEMA, **changes)

    def tags(self) -> dict[str, str]:
        """The registry tags derived from the contract: what people filter versions by in
        the MLflow UI and `pneumo-exp models` lists."""
        return {TAG_THRESHOLD: f"{self.threshold:.6f}", TAG_TEMPERATURE: f"{self.temperature:.6f}",
                **({} if self.min_sensitivity is None
                   else {TAG_MIN_SENSITIVITY: str(self.min_sensitivity)})}

    def validated_figures(self, tags: Mapping[str, str] | None = None) -> Validated:
        """What validation showed at the threshold, for a site's report: counts, or for a
        version registered before they were kept, the figures its `tags` hold."""
        if self.validated:
            return Validated(Proportion(*self.validated["sensitivity"]),
                             Proportion(*self.validated["specificity"]))
        figures = [(tags or {}).get(figure_tag(f"val_{k}_at_thr"))
                   for k in ("sensitivity", "specificity")]
        return Validated(*(float(f) if f else None for f in figures))
