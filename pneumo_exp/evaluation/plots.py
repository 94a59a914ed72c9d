"""Figures logged to MLflow, each titled with what it shows, on which split, of which run:
learning curves, confusion matrix, ROC, reliability diagram, a search's progress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, roc_curve

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.evaluation.calibration import reliability_bins


def _robust_ylim(ax: Axes, values: Sequence[float]) -> None:
    """Keep outliers (a loss of 20 in the first epoch, a collapsed trial) from flattening
    the rest: the axis spans the values within 6 median absolute deviations."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(finite) < 3:
        return
    median = np.median(finite)
    mad = max(float(np.median(np.abs(finite - median))), 1e-3)
    inside = finite[np.abs(finite - median) <= 6 * mad]
    if len(inside) < len(finite):
        pad = 0.15 * (inside.max() - inside.min() + 1e-3)
        ax.set_ylim(inside.min() - pad, inside.max() + pad)


def curves_figure(history: Mapping[str, Sequence[float]], title: str = "",
                  initial_epoch: int = 0, objective: str = "val_auc",
                  direction: str = "max") -> Figure:
    """Train vs validation per epoch (numbered as the MLflow metrics' steps), one panel per
    metric, the best epoch by the objective marked."""
    names = [m for m in ("loss", "accuracy", "auc") if m in history or f"val_{m}" in history]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    target = [v if np.isfinite(v) else np.nan for v in history.get(objective, [])]
    best = None
    if target and not np.all(np.isnan(target)):
        best = initial_epoch + int(np.nanargmax(target) if direction == "max"
                                   else np.nanargmin(target))
    for ax, name in zip(axes[0], names, strict=True):
        shown: list[float] = []
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = list(history.get(key, []))
            if values:
                epochs = np.arange(initial_epoch, initial_epoch + len(values))
                ax.plot(epochs, values, marker="o", label=label)
                shown += values
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1,
                       label=f"best epoch {best}")
        if name == "loss":
            _robust_ylim(ax, shown)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Learning curves, {title}" if title else "Learning curves")
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    confusion_panel(ax, y_true, y_pred, title or "confusion matrix")
    fig.tight_layout()
    return fig


def confusion_panel(ax: Axes, y_true: np.ndarray, y_pred: np.ndarray, title: str) -> None:
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=[0, 1],
                                            display_labels=list(CLASS_NAMES), ax=ax,
                                            colorbar=False, cmap="Blues")
    ax.set_title(title, fontsize=10)


def roc_figure(y_true: np.ndarray, prob: np.ndarray, title: str = "",
               threshold: float | None = None) -> Figure:
    """The ROC, its operating threshold marked, its axes named in words."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    roc_panel(ax, y_true, prob, threshold)
    ax.set_xlabel("1 - specificity (NORMAL called PNEUMONIA)")
    ax.set_ylabel("sensitivity (PNEUMONIA found)")
    ax.set_title(title or "ROC", fontsize=10)
    fig.tight_layout()
    return fig


def roc_panel(ax: Axes, y_true: np.ndarray, prob: np.ndarray, threshold: float | None,
              label: str = "threshold", markersize: float | None = None) -> None:
    """ROC of PNEUMONIA (positive) against NORMAL, with the operating threshold marked."""
    RocCurveDisplay.from_predictions(y_true, prob, ax=ax, name="PNEUMONIA vs NORMAL",
                                     pos_label=1, plot_chance_level=True)
    if threshold is not None:
        fpr, tpr, thresholds = roc_curve(y_true, prob)
        i = int(np.argmin(np.abs(thresholds - threshold)))
        ax.plot(fpr[i], tpr[i], "o", color="red", markersize=markersize,
                label=f"{label} {threshold:.3f}")
        ax.legend(loc="lower right", fontsize=8)


def reliability_figure(y_true: np.ndarray, prob: np.ndarray, bins: int, title: str = "",
                       extra: Mapping[str, np.ndarray] | None = None) -> Figure:
    """Observed frequency of PNEUMONIA against the predicted probability, per bin (the
    ECE's bins)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for label, p in {"model": prob, **(extra or {})}.items():
        observed, predicted, _ = reliability_bins(y_true, p, bins)
        CalibrationDisplay(observed, predicted, p).plot(ax=ax, name=label, marker="o")
    ax.set(xlabel="predicted probability of PNEUMONIA", ylabel="fraction PNEUMONIA",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.set_title(title or "reliability", fontsize=10)
    fig.tight_layout()
    return fig


PROGRESS_KINDS = {  # how each kind of trial is drawn on a search's progress plot
    "completed": dict(marker="o", color="tab:blue", label="full fidelity"),
    "screened": dict(marker=".", color="tab:gray", label="screened (low fidelity)"),
    "stopped": dict(marker="o", markerfacecolor="none", color="tab:orange",
                    label="stopped by a rule (median, constant output, no learning)"),
    "cut": dict(marker="x", color="tab:red", label="cut by the time budget"),
}


def search_progress_figure(points: Sequence[tuple[str, float, float | None, str]],
                           objective: str, direction: str, title: str) -> Figure:
    """Each trial's objective when it ended, by kind (PROGRESS_KINDS; a cut trial has no
    objective and sits on the axis), and the best so far of the full-fidelity trials,
    against time."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    points = sorted(points, key=lambda p: p[1])
    scored = [v for _, _, v, _ in points if v is not None]
    bottom = min(scored) if scored else 0.0
    pick = max if direction == "max" else min
    best, curve = None, []  # the best so far, from the first full-fidelity trial on
    for _, t, v, kind in points:
        if v is not None and kind == "completed":
            best = v if best is None else pick(best, v)
        if best is not None:
            curve.append((t / 60, best))
    for kind, style in PROGRESS_KINDS.items():
        these = [(t / 60, bottom if v is None else v, trial)
                 for trial, t, v, k in points if k == kind]
        if these:
            ax.plot([x for x, _, _ in these], [y for _, y, _ in these], linestyle="none",
                    **style)
            for x, y, trial in these:
                ax.annotate(trial, (x, y), textcoords="offset points", xytext=(3, 3),
                            fontsize=7)
    if curve:
        ax.step(*zip(*curve, strict=True), where="post", label="best so far (full fidelity)",
                color="tab:green")
    ax.set_xlabel("minutes into the search")
    ax.set_ylabel(f"{objective} (best checkpoint)")
    _robust_ylim(ax, scored)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title(f"Search progress, {title}", fontsize=10)
    fig.tight_layout()
    return fig
