"""Search spaces that a configuration can reshape without touching code: a hypermodel
declares each hyperparameter with its default range through `Space`, and an entry of `space:`
replaces it (a value: hp.Fixed; a list: hp.Choice; {min, max, step, sampling}: hp.Int or
hp.Float)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras_tuner as kt

from pneumo_exp.errors import ConfigError
from pneumo_exp.grammar import check_space


class Space:
    """Reads hyperparameters from `hp`, with the configured overrides applied."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.overrides = dict(overrides or {})
        check_space(self.overrides)

    def choice(self, hp: kt.HyperParameters, name: str, values: Sequence[Any],
               default: Any) -> Any:
        return self._get(hp, name, {"values": list(values), "default": default})

    def float(self, hp: kt.HyperParameters, name: str, min_value: float, max_value: float,
              default: float, step: float | None = None, sampling: str = "linear") -> float:
        return self._get(hp, name, {"min": float(min_value), "max": float(max_value),
                                    "step": step, "sampling": sampling, "default": default})

    def float_if_named(self, hp: kt.HyperParameters, name: str, min_value: float,
                       max_value: float, off: float = 0.0) -> float:
        """`name` as `float` declares it where `space:` names it or `hp` holds it (a trial
        rebuilt from its values); elsewhere `off`, with no hyperparameter declared: a space
        without it keeps its random draws, and a search saved without it resumes with the
        space it began with. Its value must be a number >= 0."""
        if name not in self.overrides and name not in hp.values:
            return off
        value = self.float(hp, name, min_value, max_value, off)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"'space.{name}' must be a number >= 0 (YAML reads 1e-4 as "
                              f"text: write 1.0e-4); got {value!r}.")
        return value

    def int(self, hp: kt.HyperParameters, name: str, min_value: int, max_value: int,
            default: int, step: int = 1) -> int:
        return self._get(hp, name, {"min": min_value, "max": max_value, "step": step,
                                    "sampling": "linear", "default": default})

    def boolean(self, hp: kt.HyperParameters, name: str, default: bool) -> bool:
        return self._get(hp, name, {"values": [True, False], "default": default})

    def _get(self, hp: kt.HyperParameters, name: str, spec: dict[str, Any]) -> Any:
        """The hyperparameter `name`: the hypermodel's range `spec`, or the configured
        entry (its grammar checked when the configuration was read: grammar.check_space)."""
        override = self.overrides.get(name, spec)
        if isinstance(override, list):
            override = {"values": override, "default": spec.get("default")}
        if not isinstance(override, dict):
            return hp.Fixed(name, override)
        try:
            if "values" in override:
                values = list(override["values"])
                default = override.get("default")
                if all(isinstance(v, bool) for v in values) and len(values) == 2:
                    return hp.Boolean(name, default=bool(default))
                return hp.Choice(name, values, default=default if default in values else values[0])
            lo, hi = override["min"], override["max"]
            default = override.get("default", spec.get("default"))
            default = default if default is not None and lo <= default <= hi else lo
            sampling = override.get("sampling", "linear")
            integral = isinstance(lo, int) and isinstance(hi, int)
            if integral and not isinstance(spec.get("min"), float):
                return hp.Int(name, lo, hi, step=override.get("step") or 1,
                              sampling=sampling, default=int(default))
            return hp.Float(name, float(lo), float(hi), step=override.get("step"),
                            sampling=sampling, default=float(default))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"'space.{name}': {e}; got {override!r}.") from e
