"""Why this model: which hyperparameters moved a search's objective, and how.

Optuna's fANOVA evaluator (Hutter et al. 2014) on an in-memory study built from the
search's finished trials: each hyperparameter's share of the objective's variance, over
the values the trials tried (numbers as ranges, the rest as choices; a value no trial
varied is left out). Beside it, a parallel-coordinates image of the trials coloured by the
objective, and the objective against each of the most important hyperparameters. With few
trials the estimate is rough, and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pneumo_exp.evaluation.plots import plt
from pneumo_exp.text import literal, text_table

MEANINGFUL = 20  # fewer finished trials than this: importance is a rough guide
TOP = 3  # hyperparameters plotted against the objective


@dataclass(frozen=True)
class Importance:
    objective: str
    trials: int  # the finished trials it was estimated from
    fidelity: str
    shares: dict[str, float]  # hyperparameter -> share of the objective's variance, summing to 1
    values: list[dict[str, Any]]  # each trial's varying hyperparameters
    scores: list[float]

    @property
    def caveat(self) -> str:
        if self.trials < MEANINGFUL:
            return (f"Only {self.trials} finished trials: too few for importance to mean much "
                    f"(about {MEANINGFUL} are needed); read it as a rough guide.")
        return ""

    def table(self) -> str:
        rows = [(name, f"{share:.3f}") for name, share in self.shares.items()]
        head = (f"Hyperparameter importance for {self.objective} (fANOVA over {self.trials} "
                f"{self.fidelity} trials):")
        return "\n".join([head, text_table(["hyperparameter", "share"], rows),
                          *([self.caveat] if self.caveat else [])])


def varying(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each trial's hyperparameters (as values, not MLflow strings) that differ between
    the trials; Keras Tuner's own `tuner/` entries left out."""
    values = [{k: literal(v) for k, v in r["params"].items() if not k.startswith("tuner/")}
              for r in rows]
    common = set.intersection(*(set(v) for v in values)) if values else set()
    keep = sorted(k for k in common if len({repr(v[k]) for v in values}) > 1)
    return [{k: v[k] for k in keep} for v in values]


def estimate(rows: Sequence[Mapping[str, Any]], objective: str, direction: str,
             fidelity: str, seed: int = 0) -> Importance | None:
    """fANOVA importance over the finished trials in `rows` (one fidelity); None with fewer
    than 3 scored trials or nothing that varied."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    scored = [r for r in rows if r.get(objective) is not None
              and not math.isnan(r[objective]) and r.get("finished")]
    values = varying(scored)
    if len(scored) < 3 or not values or not values[0]:
        return None
    distributions: dict[str, Any] = {}
    for name in values[0]:
        seen = [v[name] for v in values]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in seen):
            distributions[name] = IntDistribution(min(seen), max(seen))
        elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in seen):
            distributions[name] = FloatDistribution(float(min(seen)), float(max(seen)))
        else:
            distributions[name] = CategoricalDistribution(sorted({str(x) for x in seen}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if direction == "max" else "minimize")
    for v, r in zip(values, scored, strict=True):
        params = {k: (str(x) if isinstance(distributions[k], CategoricalDistribution)
                      else float(x) if isinstance(distributions[k], FloatDistribution) else x)
                  for k, x in v.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(r[objective])))
    shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return Importance(objective, len(scored), fidelity, dict(shares), values,
                      [float(r[objective]) for r in scored])


def _numeric(column: list[Any]) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) for x in column)


def _log_scaled(column: list[Any]) -> bool:
    """Positive numbers over a decade or more (learning rates): drawn on a log scale."""
    return _numeric(column) and min(column) > 0 and max(column) >= 10 * min(column)


def _axis_values(column: list[Any]) -> tuple[np.ndarray, list[str]]:
    """A column on [0, 1]: numbers scaled to their range (log if they span decades),
    choices evenly placed."""
    if _numeric(column):
        lo, hi = min(column), max(column)
        f = np.log10 if _log_scaled(column) else (lambda x: x)
        scaled = [(f(x) - f(lo)) / (f(hi) - f(lo)) if hi > lo else 0.5 for x in column]
        return np.array(scaled), [f"{lo:.3g}", f"{hi:.3g}"]
    choices = sorted({str(x) for x in column})
    step = 1 / max(1, len(choices) - 1)
    return np.array([choices.index(str(x)) * step for x in column]), choices


def importance_figure(imp: Importance, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(imp.shares) + 1.6))
    names = list(imp.shares)[::-1]
    ax.barh(names, [imp.shares[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"share of the variance of {imp.objective} (fANOVA)")
    ax.set_title(title + (f"\n{imp.caveat}" if imp.caveat else ""), fontsize=8)
    fig.tight_layout()
    return fig


def parallel_figure(imp: Importance, title: str) -> Figure:
    """One line per trial across the hyperparameters (most important first), coloured by
    the objective."""
    names = list(imp.shares)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(names) + 2), 4.6))
    colours = plt.get_cmap("viridis")
    lo, hi = min(imp.scores), max(imp.scores)
    columns = {n: _axis_values([v[n] for v in imp.values]) for n in names}
    order = np.argsort(imp.scores)  # the best drawn last, on top
    for i in order:
        shade = (imp.scores[i] - lo) / (hi - lo) if hi > lo else 1.0
        ax.plot(range(len(names)), [columns[n][0][i] for n in names], color=colours(shade),
                alpha=0.8, linewidth=1.2)
    for x, n in enumerate(names):
        ax.axvline(x, color="grey", linewidth=0.5)
        labels = columns[n][1]
        ax.text(x, -0.08, labels[0], ha="center", va="top", fontsize=7)
        ax.text(x, 1.04, labels[-1], ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.12)
    mappable = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(lo, hi))
    fig.colorbar(mappable, ax=ax, label=imp.objective)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def landscape_figure(imp: Importance, title: str) -> Figure:
    """The objective against each of the most important hyperparameters."""
    names = list(imp.shares)[:TOP]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        column = [v[name] for v in imp.values]
        positions, labels = _axis_values(column)
        ax.plot(column if _numeric(column) else positions, imp.scores, "o", alpha=0.8)
        if _log_scaled(column):
            ax.set_xscale("log")
        elif not _numeric(column):
            ax.set_xticks([i / max(1, len(labels) - 1) for i in range(len(labels))], labels)
        ax.set_xlabel(f"{name} (share {imp.shares[name]:.2f})")
        ax.set_ylabel(imp.objective)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
