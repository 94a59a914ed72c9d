"""Searches side by side (`pneumo-exp compare`): the best full-fidelity objective so far
against wall time and against trials, each search's best trial's figures, and whether the
best trials differ by more than the validation noise. Any searches of the store: of one
architecture and configuration under different tuners, or of different architectures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pneumo_exp.evaluation.noise import Scored, difference
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.text import text_table
from pneumo_exp.tracking.names import FULL, TAG_DATA, VALIDATION_PARAMS
from pneumo_exp.tracking.search_record import SearchRecord


@dataclass(frozen=True)
class SearchSummary:
    name: str
    arch: str
    objective: str
    rows: list[dict[str, Any]]  # SearchRecord.rows, in the order the trials ended
    wall_time_s: float
    record: SearchRecord
    validation: tuple[str | None, ...]  # what decides its validation images

    def best_predictions(self) -> Scored | None:
        """The best full-fidelity trial's validation probabilities."""
        return self.record.validation_predictions(self.best["run_id"]) if self.best else None

    def curve(self) -> list[tuple[float, int, float]]:
        """(minutes, trials ended, best full-fidelity objective so far) after each trial."""
        so_far = ((n, r, self.record.best_so_far(FULL, self.rows[:n]))
                  for n, r in enumerate(self.rows, 1))
        return [(r["ended_s"] / 60, n, best[1]) for n, r, best in so_far if best]

    @property
    def best(self) -> dict[str, Any] | None:
        found = self.record.best_so_far(FULL, self.rows)
        return next(r for r in self.rows if r["trial"] == found[0]) if found else None


def summarize(client: MlflowClient, parent: Run) -> SearchSummary:
    record = SearchRecord.from_parent(client, parent)
    rows = sorted(record.rows(), key=lambda r: r["ended_s"])
    validation = (*(parent.data.params.get(k) for k in VALIDATION_PARAMS),
                  parent.data.tags.get(TAG_DATA))
    return SearchSummary(record.search_name, record.cfg.arch, record.cfg.search.objective, rows,
                         float(parent.data.metrics.get("wall_time_s", rows[-1]["ended_s"]
                                                       if rows else 0.0)), record, validation)


def noise_verdicts(searches: Sequence[SearchSummary]) -> list[str]:
    """Whether each search's best full-fidelity trial differs from the first search's by
    more than the validation noise (evaluation.noise), in the first search's objective."""
    first, lines = searches[0], []
    target = first.record.cfg.search.sensitivity_target
    a = first.best_predictions()
    for other in searches[1:]:
        b = other.best_predictions()
        what = f"{first.name} vs {other.name}"
        if a is None or b is None:
            lines.append(f"{what}: no validation probabilities logged for a best trial "
                         "(a search older than this record, or none finished), so no "
                         "verdict on the noise.")
            continue
        paired = first.validation == other.validation and np.array_equal(a.labels, b.labels)
        d = difference(first.objective, a, b, paired, sensitivity_target=target)
        lines.append(f"{what}: {d.describe()}.")
    return lines


def compare_table(searches: Sequence[SearchSummary]) -> str:
    """The best full-fidelity trial of each search, side by side."""
    rows = []
    for s in searches:
        best = s.best or {}
        full = sum(r["fidelity"] == FULL for r in s.rows)
        rows.append([s.name, s.arch, s.objective, f"{len(s.rows)} ({full} full)",
                     best.get("trial", "-"), best.get(s.objective), best.get("val_auc"),
                     best.get("val_sensitivity"), best.get("val_specificity"),
                     f"{s.wall_time_s / 60:.1f}"])
    return text_table(["search", "arch", "objective", "trials", "best trial", "best",
                       "val AUC", "sens", "spec", "minutes"], rows)


def compare_figure(searches: Sequence[SearchSummary]) -> Figure:
    """Best full-fidelity objective so far against minutes and against trials."""
    fig, (by_time, by_trial) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in searches:
        curve = s.curve()
        if not curve:
            continue
        for ax, x in ((by_time, [m for m, _, _ in curve]), (by_trial, [n for _, n, _ in curve])):
            ax.step(x, [b for _, _, b in curve], where="post", marker="o",
                    label=f"{s.name} ({s.arch})")
    objectives = sorted({s.objective for s in searches})
    for ax, x in ((by_time, "minutes into the search"), (by_trial, "trials ended")):
        ax.set_xlabel(x)
        ax.set_ylabel(f"best {' / '.join(objectives)} so far (full fidelity)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Searches compared" + (" (their objectives differ)" if len(objectives) > 1
                                        else ""), fontsize=10)
    fig.tight_layout()
    return fig
