"""Figures into the active MLflow run: a model's evaluation on a labelled set (figures with
intervals, confusion matrices, ROC, reliability diagram), and the confusion-matrix counts
every such plot carries. No TensorFlow."""

from __future__ import annotations

import mlflow
import numpy as np
from matplotlib.figure import Figure

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.calibration import ECE_BINS
from pneumo_exp.evaluation.metrics import binary_metrics, confusion_counts, evaluation_figures
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.tracking.names import plot, plot_counts, rounded


def log_figure(fig: Figure, name: str) -> None:
    """plots/<name>.png, then the figure is closed."""
    mlflow.log_figure(fig, plot(name))
    plt.close(fig)


def log_confusion(y_true: np.ndarray, prob: np.ndarray, threshold: float, name: str,
                  title: str) -> None:
    """The confusion matrix at `threshold` as plots/<name>.png and its counts as .json."""
    figures = binary_metrics(y_true, prob, threshold)
    mlflow.log_dict({"threshold": threshold, "labels": list(CLASS_NAMES),
                     "rows_true_cols_pred": confusion_counts(figures)}, plot_counts(name))
    log_figure(plots.confusion_figure(y_true, (np.asarray(prob) >= threshold).astype(int),
                                      title), name)


def log_evaluation(y_true: np.ndarray, prob: np.ndarray, threshold: float, split: str,
                   n_bootstrap: int = 1000, title: str = "",
                   uncalibrated: np.ndarray | None = None) -> dict[str, float]:
    """Into the active run: the figures, two confusion matrices (PNG + counts), the ROC with
    the threshold marked, and the reliability diagram."""
    title = title or f"{split} split"
    figures = evaluation_figures(y_true, prob, threshold, split, n_bootstrap, uncalibrated)
    mlflow.log_metrics(rounded(figures))
    for name, t in (("0.5", 0.5), ("threshold", threshold)):
        log_confusion(y_true, prob, t, f"{split}_confusion_matrix_{name}",
                      f"{title}, threshold {t:.3f}")
    log_figure(plots.roc_figure(y_true, prob, f"ROC, {title}", threshold), f"{split}_roc")
    extra = {"before calibration": uncalibrated} if uncalibrated is not None else None
    log_figure(plots.reliability_figure(
        y_true, prob, ECE_BINS, f"Reliability, {title}: ECE {figures[f'{split}_ece']:.3f}",
        extra), f"{split}_reliability")
    return figures
