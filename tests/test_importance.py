"""The importance figures a search logs (Optuna's): the shares as estimated, the trials
across the hyperparameters, and the objective against the most important ones."""

from __future__ import annotations

import matplotlib
import numpy as np

from pneumo_exp.evaluation.plots import plt
from pneumo_exp.tracking.importance import (
    TOP,
    estimate,
    importance_figure,
    landscape_figure,
    parallel_figure,
)


def test_the_figures_draw_the_estimate() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(12):
        lr, units = 10 ** rng.uniform(-4, -2), int(rng.integers(8, 64))
        rows.append({"finished": True, "val_loss": 0.2 + 0.05 * (np.log10(lr) + 3) ** 2,
                     "params": {"learning_rate": str(lr), "dense_units": str(units),
                                "dropout": str(rng.choice([0.1, 0.5])),
                                "intensity": str(rng.choice(["equalize", "standardize"]))}})
    imp = estimate(rows, "val_loss", "min", "full")
    style = dict(matplotlib.rcParams)

    bars = importance_figure(imp, "search s (aug_cnn), 12 full trials")
    names = [t.get_text() for t in bars.axes[0].get_yticklabels()]
    widths = [p.get_width() for p in bars.axes[0].patches]
    assert sorted(names) == sorted(imp.shares)
    np.testing.assert_allclose(widths, [imp.shares[n] for n in names])
    assert "12 full trials" in bars.get_suptitle() and "too few" in bars.get_suptitle()

    parallel = parallel_figure(imp, "t")
    ticks = [t.get_text() for t in parallel.axes[0].get_xticklabels()]
    assert ticks[0] == "val_loss" and sorted(ticks[1:]) == sorted(imp.shares)

    landscape = landscape_figure(imp, "t")
    drawn = {ax.get_xlabel(): ax for ax in landscape.axes if ax.get_xlabel()}
    assert set(drawn) == set(list(imp.shares)[:TOP])
    assert drawn["learning_rate"].get_xscale() == "log"  # it spans two decades
    assert dict(matplotlib.rcParams) == style  # Optuna's style stays with its figures
    for fig in (bars, parallel, landscape):
        plt.close(fig)
