"""What a search shows while it runs: a line as each trial begins and ends (trial i of n,
elapsed time, an estimate of what remains). Plain text from plain values; the trials table
is tracking.search_record.format_table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pneumo_exp.text import describe, duration


def trial_begins(trial_id: str, position: int, total: int, changed: Mapping[str, Any],
                 elapsed: float, stage: str = "") -> str:
    """`stage`: screen or full in a multi-fidelity search."""
    what = ("the space's default point" if not changed
            else f"{describe(changed)}; the rest at the space's defaults")
    kind = f" ({stage})" if stage else ""
    return (f"Trial {trial_id}{kind} [{position}/{total}], {duration(elapsed)} into the "
            f"search: {what}")


def budget_spent(minutes: float, completed: int, planned: int, cut: int) -> str:
    """What a search the time budget capped says, and how it goes on."""
    return (f"Time budget of {minutes:g} min spent: {completed} of the {planned} planned "
            f"trials completed{f', {cut} cut short' if cut else ''}. The same command with "
            "a larger budget (TIME_BUDGET=, or none) finishes the planned trials without "
            "redoing any" + (" (a cut trial runs again from its start)." if cut else "."))


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
