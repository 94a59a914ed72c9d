"""Evaluating a model on labelled images: figures at 0.5 and at a threshold chosen on
validation, bootstrap confidence intervals, confusion matrices and ROC, logged to MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

from pneumo_exp import plots
from pneumo_exp.calibration import ECE_BINS, calibration_figures, logit
from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.metrics import binary_metrics

CI_LEVEL = 0.95


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float) -> float:
    """A threshold with the highest specificity among those whose sensitivity reaches
    `min_sensitivity` (missed pneumonia is the costly error). Chosen on validation only.

    Every threshold between the lowest PNEUMONIA score it must keep and the next NORMAL
    score below gives these same validation figures; the one returned lies midway between
    the two in logit space, the largest margin on both sides. (The top of that gap, right
    under the PNEUMONIA scores, loses the sensitivity as soon as another site's scores
    move down a little, which confident models make likely: their scores crowd near 1.)"""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(y_true, prob)
    reaching = np.flatnonzero(tpr >= min_sensitivity)  # roc_curve: thresholds decreasing
    best = reaching[np.argmin(fpr[reaching])]
    top = float(min(thresholds[best], 1.0))
    below = prob[(y_true == 0) & (prob < top)]
    if not len(below):
        return top
    return float(1 / (1 + np.exp(-(logit(top) + logit(below.max())) / 2)))


def bootstrap_ci(y_true: np.ndarray, prob: np.ndarray, threshold: float, n: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile intervals over `n` resamples of the images: accuracy at 0.5,
    accuracy at `threshold` (`accuracy_at_thr`) and AUC."""
    rng = np.random.default_rng(seed)
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    values: dict[str, list[float]] = {"accuracy": [], "accuracy_at_thr": [], "auc": []}
    for _ in range(n):
        idx = rng.integers(0, len(y_true), len(y_true))
        values["accuracy"].append(accuracy_score(y_true[idx], prob[idx] >= 0.5))
        values["accuracy_at_thr"].append(accuracy_score(y_true[idx], prob[idx] >= threshold))
        if len(np.unique(y_true[idx])) == 2:
            values["auc"].append(roc_auc_score(y_true[idx], prob[idx]))
    tail = (1 - CI_LEVEL) / 2 * 100
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            for name, v in values.items()}


def evaluation_figures(y_true: np.ndarray, prob: np.ndarray, threshold: float, split: str,
                       n_bootstrap: int = 1000,
                       uncalibrated: np.ndarray | None = None) -> dict[str, float]:
    """`<split>_<figure>` at 0.5, `<split>_<figure>_at_thr` at `threshold`, the CIs, the
    calibration error and Brier score (and both before calibration, if given)."""
    figures = binary_metrics(y_true, prob, 0.5, prefix=f"{split}_")
    at_thr = binary_metrics(y_true, prob, threshold, prefix=f"{split}_")
    figures.update({f"{k}_at_thr": v for k, v in at_thr.items()
                    if not k.endswith(("_auc", "_loss"))})
    figures[f"{split}_threshold"] = threshold
    figures.update(calibration_figures(y_true, prob, f"{split}_"))
    if uncalibrated is not None:
        figures.update(calibration_figures(y_true, uncalibrated, f"{split}_uncalibrated_"))
    for name, (low, high) in bootstrap_ci(y_true, prob, threshold, n_bootstrap).items():
        figures[f"{split}_{name}_ci_low"], figures[f"{split}_{name}_ci_high"] = low, high
    return figures


def log_evaluation(y_true: np.ndarray, prob: np.ndarray, threshold: float, split: str,
                   n_bootstrap: int = 1000, title: str = "",
                   uncalibrated: np.ndarray | None = None) -> dict[str, float]:
    """Into the active run: the figures, two confusion matrices (PNG + counts), the ROC with
    the threshold marked, and the reliability diagram."""
    title = title or f"{split} split"
    figures = evaluation_figures(y_true, prob, threshold, split, n_bootstrap, uncalibrated)
    mlflow.log_metrics(figures)
    for name, t in (("0.5", 0.5), ("threshold", threshold)):
        pred = (prob >= t).astype(int)
        fig = plots.confusion_figure(y_true, pred, f"{title}, threshold {t:.3f}")
        mlflow.log_figure(fig, f"plots/{split}_confusion_matrix_{name}.png")
        plots.close(fig)
        m = binary_metrics(y_true, prob, t)
        mlflow.log_dict({"threshold": t, "labels": list(CLASS_NAMES),
                         "rows_true_cols_pred": [[int(m["tn"]), int(m["fp"])],
                                                 [int(m["fn"]), int(m["tp"])]]},
                        f"plots/{split}_confusion_matrix_{name}.json")
    fig = plots.roc_figure(y_true, prob, f"ROC, {title}", threshold)
    mlflow.log_figure(fig, f"plots/{split}_roc.png")
    plots.close(fig)
    extra = {"before calibration": uncalibrated} if uncalibrated is not None else None
    fig = plots.reliability_figure(y_true, prob, ECE_BINS,
                                   f"Reliability, {title}: ECE {figures[f'{split}_ece']:.3f}",
                                   extra)
    mlflow.log_figure(fig, f"plots/{split}_reliability.png")
    plots.close(fig)
    return figures
