"""Figures logged to MLflow: learning curves, confusion matrix, ROC curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from pneumo_exp.config import CLASS_NAMES


def curves_figure(history: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """Train vs validation, one panel per metric (accuracy, loss, AUC), per epoch."""
    names = [m for m in ("accuracy", "loss", "auc") if m in history]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                values = history[key]
                ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=[0, 1],
                                            display_labels=list(CLASS_NAMES), ax=ax,
                                            colorbar=False, cmap="Blues")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return fig


def roc_figure(y_true: np.ndarray, prob: np.ndarray, title: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    RocCurveDisplay.from_predictions(y_true, prob, ax=ax, name="model", plot_chance_level=True)
    ax.set_title(title or "ROC")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
