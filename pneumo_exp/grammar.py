"""The grammar of the settings written as text or ranges: a test-time view
(`registry.views`, data/views.py) and a search-space entry (`space`, hypermodels/space.py),
checked when the configuration is read, so a bad one stops before any training."""

from __future__ import annotations

from typing import Any

from pneumo_exp.errors import ConfigError

ORIGINAL = "original"  # the view that is the image as decoded
VIEW_GRAMMAR = ("'original', 'crop F' or 'pad F' (0 < F < 1), or 'shift DY DX' (fractions "
                "of the side below 0.5)")  # registry.views: test-time views (data/views.py)


def read_view(spec: str) -> tuple[str, tuple[float, ...]]:
    """A test-time view's text as its name and numbers; ValueError naming the grammar if it
    is none (what each view does: data/views.py)."""
    name, *words = spec.split() or [""]
    try:
        args = tuple(float(w) for w in words)
    except ValueError:
        args = (float("nan"),)  # matches no rule below
    if ((name == ORIGINAL and not words)
            or (name in ("crop", "pad") and len(args) == 1 and 0 < args[0] < 1)
            or (name == "shift" and len(args) == 2 and all(abs(a) < 0.5 for a in args))):
        return name, args
    raise ValueError(f"{spec!r} is not a view: {VIEW_GRAMMAR}")


RANGE_KEYS = ("min", "max", "step", "sampling", "default")  # a space entry's range
SAMPLINGS = ("linear", "log", "reverse_log")


def check_space(space: dict[str, Any]) -> None:
    """Each `space` entry is a value, a non-empty list of values, or a range {min, max,
    step, sampling}; ConfigError naming the entry otherwise (hypermodels/space.py reads
    them)."""
    for name, entry in space.items():
        key = f"space.{name}"
        if isinstance(entry, list) and not entry:
            raise ConfigError(f"'{key}' needs at least one value; got [].")
        if not isinstance(entry, dict):
            continue
        if set(entry) - set(RANGE_KEYS) or not {"min", "max"} <= set(entry):
            raise ConfigError(f"'{key}' must be a value, a list of values, or a mapping "
                              f"with min and max (and step, sampling); got {entry!r}.")
        numbers = [entry[k] for k in ("min", "max", "step") if entry.get(k) is not None]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers):
            raise ConfigError(f"'{key}': min, max and step must be numbers; got {entry!r}.")
        if entry["min"] > entry["max"]:
            raise ConfigError(f"'{key}': min must not exceed max; got {entry!r}.")
        if entry.get("sampling", "linear") not in SAMPLINGS:
            raise ConfigError(f"'{key}': sampling must be {', '.join(SAMPLINGS)}; got "
                              f"{entry['sampling']!r}.")
