"""Plain text for the console, tables and model cards: durations, numbers without float
noise, hyperparameters as `k=v`, and fixed-width tables. No TensorFlow, no MLflow."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def literal(text: str) -> Any:
    """An MLflow param string back to the int, float, bool or str it was."""
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return {"True": True, "False": False}.get(text, text)


def short(value: Any, digits: int = 3) -> str:
    """A hyperparameter's value as a person writes it: 0.30000000000000004 -> 0.3."""
    value = literal(value) if isinstance(value, str) else value
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def describe(values: Mapping[str, Any], digits: int = 3) -> str:
    """k=v, ...; values may be MLflow's param strings."""
    return ", ".join(f"{k}={short(v, digits)}" for k, v in values.items()) or "-"


def cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def text_table(heads: Sequence[str], rows: Sequence[Sequence[Any]],
               fmt: Callable[[int, Any], str] | None = None) -> str:
    """Left-aligned columns two spaces apart; `fmt(column, value)` formats a cell."""
    fmt = fmt or (lambda _, v: cell(v))
    cells = [[fmt(i, v) for i, v in enumerate(row)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
