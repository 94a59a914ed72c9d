"""What a search shows while it runs and when it ends: a line as each trial begins and
ends (trial i of n, elapsed time, an estimate of what remains), how each trial ended, and
the table of all trials. Plain text from plain values; no TensorFlow, no MLflow."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Probabilities on every validation image within this of each other: the model answers
# the same whatever the image (it has collapsed, or not begun to learn).
CONSTANT_SPREAD = 1e-3
SPREAD_KEY = "val_spread"  # max - min of the validation probabilities, logged every epoch
NO_LEARNING_AUC = 0.6  # a best validation AUC below this is no better than guessing, near enough
COLUMNS = ("trial", "val_auc", "val_sensitivity", "val_specificity", "epochs", "seconds",
           "status", "changed")  # the hyperparameters last: the longest cell


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def literal(text: str) -> Any:
    """An MLflow param string back to the int, float, bool or str it was."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def describe(values: Mapping[str, Any]) -> str:
    """k=v, ...; values may be MLflow's param strings."""
    return ", ".join(f"{k}={short(literal(v) if isinstance(v, str) else v)}"
                     for k, v in values.items()) or "-"


def trial_begins(trial_id: str, position: int, total: int, changed: Mapping[str, Any],
                 elapsed: float) -> str:
    what = ("the space's default point" if not changed
            else f"{describe(changed)}; the rest at the space's defaults")
    return f"Trial {trial_id} [{position}/{total}], {duration(elapsed)} into the search: {what}"


def trial_ends(trial_id: str, row: Mapping[str, Any] | None, best: tuple[str, float] | None,
               seconds: float, elapsed: float, remaining: float | None) -> str:
    if row is None:
        result = "no record"
    else:
        auc = row.get("val_auc")
        result = (f"val AUC {auc:.4f}, sensitivity {row['val_sensitivity']:.3f}, specificity "
                  f"{row['val_specificity']:.3f} at 0.5, {row['epochs']} epoch"
                  f"{'s' if row['epochs'] != 1 else ''}"
                  if auc is not None and not math.isnan(auc) else "no figures")
        result += f"; {row['status']}"
    line = f"Trial {trial_id} ended after {duration(seconds)}: {result.rstrip('.')}."
    if best:
        line += f" Best so far: trial {best[0]} ({best[1]:.4f})."
    line += f" Elapsed {duration(elapsed)}"
    if remaining:
        line += f", about {duration(remaining)} to go"
    return line + "."


def trial_status(history: Mapping[str, Sequence[float]], planned_epochs: int,
                 constant_epochs: int, below_median_at: int | None, out_of_time: bool) -> str:
    """How a trial that trained ended, in words for the table and the run's tag."""
    epochs = len(history.get("loss", []))
    spread = list(history.get(SPREAD_KEY, []))
    auc = [v for v in history.get("val_auc", []) if not math.isnan(v)]
    if len(spread) >= constant_epochs and all(s < CONSTANT_SPREAD
                                              for s in spread[-constant_epochs:]):
        return f"constant output (stopped after {epochs} epochs)"
    if below_median_at is not None:
        return f"below the median of earlier trials (stopped after {below_median_at + 1} epochs)"
    if auc and max(auc) < NO_LEARNING_AUC:
        return "no learning (validation AUC below 0.6)"
    if epochs < planned_epochs:
        return ("time budget spent" if out_of_time
                else f"early stopped after {epochs} epochs")
    return "completed"


def changed_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyperparameters whose values differ between the trials."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row.get("params", {}) if k not in names and not k.startswith("tuner/")]
    return [n for n in names
            if len({str(r.get("params", {}).get(n)) for r in rows}) > 1]


def trials_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per trial: id, the hyperparameters that differ, figures, status."""
    varying = changed_columns(rows)
    table = []
    for row in rows:
        params = row.get("params", {})
        record = {k: row.get(k) for k in COLUMNS}
        record["changed"] = describe({n: params[n] for n in varying if n in params})
        table.append(record)
    return table


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text of `trials_table`."""
    def cell(key: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if key == "seconds":
            return f"{value:.0f}"
        if isinstance(value, float):
            return f"{value:.4f}" if key == "val_auc" else f"{value:.3f}"
        return str(value)

    heads = {"trial": "trial", "changed": "hyperparameters that differ", "val_auc": "val AUC",
             "val_sensitivity": "sens", "val_specificity": "spec", "epochs": "epochs",
             "seconds": "s", "status": "status"}
    cells = [[cell(k, r.get(k)) for k in COLUMNS] for r in table]
    widths = [max([len(heads[k])] + [len(c[i]) for c in cells]) for i, k in enumerate(COLUMNS)]
    lines = ["  ".join(heads[k].ljust(w) for k, w in zip(COLUMNS, widths, strict=True))]
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)
