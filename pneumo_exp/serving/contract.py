"""What a registered version carries besides its networks, defined once.

A version is a pyfunc model whose config is a `VersionContract`: each member's
preprocessing, the views each image is scored as, the temperature, the decision threshold
and the validation sensitivity it was chosen for, what validation showed at it (counts, for
a site's report), and what the validation images looked like to it (`reference`, for the
site check and the per-image check). registry/packaging.py is its one producer; serving/,
registry/ and adaptation/ read it through `from_dict`, which also reads the configs of
versions registered before the contract (schema 1: a flat dict, some keys missing, the
validated figures in tags). The tags a version gets for searching in the MLflow UI are
derived from it (`tags`).

Adding a field: give it a default here (what a version registered before it means), write
it in `to_dict`, read it in `from_dict`, and set it where promote builds the contract.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pneumo_exp.data.images import Preprocessing
from pneumo_exp.data.views import ORIGINAL
from pneumo_exp.evaluation.report import Proportion, Validated
from pneumo_exp.tracking.names import (
    TAG_MIN_SENSITIVITY,
    TAG_TEMPERATURE,
    TAG_THRESHOLD,
    TAG_VALIDATED,
    figure_tag,
)

SCHEMA = 2  # 1: the flat config of versions registered before the contract


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
    reference: Mapping[str, Any] = field(default_factory=dict)  # validation as it saw it
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
                "reference": dict(self.reference)}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any],
                  tags: Mapping[str, str] | None = None) -> VersionContract:
        """A version's contract from its config; for a version registered before the
        contract, the figures it kept in its registry `tags` fill what its config lacks."""
        tags = tags or {}
        validated = config.get("validated")
        if validated is None and TAG_VALIDATED in tags:
            validated = json.loads(tags[TAG_VALIDATED])
        min_sensitivity = config.get("min_sensitivity")
        if min_sensitivity is None and TAG_MIN_SENSITIVITY in tags:
            min_sensitivity = float(tags[TAG_MIN_SENSITIVITY])
        return cls(
            members=tuple((int(m["image_size"]), int(m["channels"]))
                          for m in config["members"]),
            threshold=float(config["threshold"]),
            temperature=float(config.get("temperature", 1.0)),
            views=tuple(config.get("views") or [ORIGINAL]),
            min_sensitivity=None if min_sensitivity is None else float(min_sensitivity),
            validated=({k: (int(v[0]), int(v[1])) for k, v in validated.items()}
                       if validated else None),
            reference=dict(config.get("reference") or {}),
            schema=int(config.get("schema", 1)))

    def with_changes(self, **changes: Any) -> VersionContract:
        """A copy with `changes` (a site version changes what it changes, keeps the rest)."""
        return replace(self, schema=SCHEMA, **changes)

    def tags(self) -> dict[str, str]:
        """The registry tags derived from the contract: what people filter versions by in
        the MLflow UI and `pneumo-exp models` lists."""
        tags = {TAG_THRESHOLD: f"{self.threshold:.6f}",
                TAG_TEMPERATURE: f"{self.temperature:.6f}"}
        if self.min_sensitivity is not None:
            tags[TAG_MIN_SENSITIVITY] = str(self.min_sensitivity)
        return tags

    def validated_figures(self, tags: Mapping[str, str] | None = None) -> Validated:
        """What validation showed at the threshold, for a site's report: counts, or for a
        version registered before they were kept, the figures its `tags` hold."""
        if self.validated:
            return Validated(Proportion(*self.validated["sensitivity"]),
                             Proportion(*self.validated["specificity"]))
        figures = [(tags or {}).get(figure_tag(f"val_{k}_at_thr"))
                   for k in ("sensitivity", "specificity")]
        return Validated(*(float(f) if f else None for f in figures))
