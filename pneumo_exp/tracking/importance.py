"""Why this model: which hyperparameters moved a search's objective, and how (Optuna's
fANOVA evaluator on an in-memory study of the search's finished trials, and Optuna's
figures; docs/searching.md, "Why this model"). With few trials the estimate is rough, and
the result says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
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
    study: Any  # the Optuna study of those trials, which the figures draw
    seed: int = 0  # of the fANOVA forest

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
            lo, hi = float(min(seen)), float(max(seen))  # log: drawn so (fANOVA is alike)
            distributions[name] = FloatDistribution(lo, hi, log=lo > 0 and hi >= 10 * lo)
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
    return Importance(objective, len(scored), fidelity, dict(shares), study, seed)


def _drawn(draw: Callable[[], Any], title: str) -> Figure:
    """An Optuna figure, titled; the style Optuna sets stays with it."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fig = np.ravel(draw())[0].figure
    fig.suptitle(title, fontsize=8)
    return fig


def importance_figure(imp: Importance, title: str) -> Figure:
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    fig = _drawn(lambda: plot_param_importances(
        imp.study, FanovaImportanceEvaluator(seed=imp.seed), target_name=imp.objective),
        title + (f"\n{imp.caveat}" if imp.caveat else ""))
    fig.tight_layout()  # room for the names and the caveat (Optuna's others lay out alone)
    return fig


def parallel_figure(imp: Importance, title: str) -> Figure:
    """One line per trial across the hyperparameters, coloured by the objective."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    fig = _drawn(lambda: plot_parallel_coordinate(imp.study, list(imp.shares),
                                                  target_name=imp.objective), title)
    fig.set_size_inches(max(6.4, 1.1 * len(imp.shares) + 2), 5.2)  # room for every axis
    fig.subplots_adjust(bottom=0.18)  # and its name
    return fig


def landscape_figure(imp: Importance, title: str) -> Figure:
    """The objective against each of the most important hyperparameters."""
    from optuna.visualization.matplotlib import plot_slice

    return _drawn(lambda: plot_slice(imp.study, list(imp.shares)[:TOP],
                                     target_name=imp.objective), title)
