"""Plots that read on their own: titled, the best epoch marked, the loss axis not
flattened by a huge first epoch, the operating threshold on the ROC."""

from __future__ import annotations

import numpy as np

from pneumo_exp.evaluation import plots


def test_curves_mark_the_best_epoch_and_keep_the_loss_readable() -> None:
    history = {"loss": [25.0, 0.6, 0.5, 0.45, 0.4], "val_loss": [30.0, 0.7, 0.6, 0.62, 0.61],
               "auc": [0.5, 0.8, 0.9, 0.92, 0.93], "val_auc": [0.5, 0.85, 0.95, 0.94, 0.93]}
    fig = plots.curves_figure(history, "trial 3 of search s", initial_epoch=0,
                              objective="val_auc", direction="max")
    loss_ax, auc_ax = fig.axes[0], fig.axes[1]
    assert "trial 3 of search s" in fig.get_suptitle()
    assert loss_ax.get_ylim()[1] < 5  # not 30: the later epochs stay visible
    best = [line for line in auc_ax.get_lines() if line.get_label() == "best epoch 2"]
    assert best and best[0].get_xdata()[0] == 2  # numbered as the MLflow steps, from 0
    assert list(auc_ax.get_lines()[0].get_xdata()) == [0, 1, 2, 3, 4]
    plots.plt.close(fig)


def test_roc_names_the_classes_and_marks_the_threshold() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = np.clip(y * 0.4 + rng.random(100) * 0.6, 0, 1)
    fig = plots.roc_figure(y, p, "ROC, validation of trial 1", threshold=0.5)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("PNEUMONIA vs NORMAL" in t for t in labels)
    assert any("threshold 0.500" in t for t in labels)
    assert ax.get_title() == "ROC, validation of trial 1"
    plots.plt.close(fig)
