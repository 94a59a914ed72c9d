"""Binary classification figures from labels and probabilities (scikit-learn), at 0.5 and
at a decision threshold, with bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from pneumo_exp.evaluation.calibration import calibration_figures

CI_LEVEL = 0.95


def spec_at_sens(y_true: np.ndarray, prob: np.ndarray, target: float) -> float:
    """The highest specificity among the thresholds whose sensitivity reaches `target`
    (exact, from the ROC): a clinical operating point as one number."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    return float(1.0 - fpr[tpr >= target].min())


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                   prefix: str = "", sensitivity_target: float = 0.95) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC, sensitivity (recall of PNEUMONIA), specificity,
    precision, F1, loss, the specificity at `sensitivity_target` and the confusion counts,
    with `prefix` on every name (e.g. 'val_')."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y_true)) == 2
    out = {
        "accuracy": accuracy_score(y_true, pred),
        "balanced_accuracy": (balanced_accuracy_score(y_true, pred) if both_classes
                              else float("nan")),
        "auc": roc_auc_score(y_true, prob) if both_classes else float("nan"),
        "spec_at_sens": (spec_at_sens(y_true, prob, sensitivity_target) if both_classes
                         else float("nan")),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": f1_score(y_true, pred, zero_division=0.0),
        "loss": log_loss(y_true, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1]),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
    }
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def confusion_counts(figures: dict[str, float], prefix: str = "") -> list[list[int]]:
    """[[TN, FP], [FN, TP]] (rows: true class, columns: predicted) from `binary_metrics`."""
    return [[int(figures[f"{prefix}tn"]), int(figures[f"{prefix}fp"])],
            [int(figures[f"{prefix}fn"]), int(figures[f"{prefix}tp"])]]


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
                       n_bootstrap: int = 1000, uncalibrated: np.ndarray | None = None,
                       sensitivity_target: float = 0.95) -> dict[str, float]:
    """`<split>_<figure>` at 0.5, `<split>_<figure>_at_thr` at `threshold`, the CIs, the
    calibration error and Brier score (and both before calibration, if given)."""
    figures = binary_metrics(y_true, prob, 0.5, f"{split}_", sensitivity_target)
    at_thr = binary_metrics(y_true, prob, threshold, prefix=f"{split}_")
    figures.update({f"{k}_at_thr": v for k, v in at_thr.items()
                    if not k.endswith(("_auc", "_loss", "_spec_at_sens"))})
    figures[f"{split}_threshold"] = threshold
    figures.update(calibration_figures(y_true, prob, f"{split}_"))
    if uncalibrated is not None:
        figures.update(calibration_figures(y_true, uncalibrated, f"{split}_uncalibrated_"))
    for name, (low, high) in bootstrap_ci(y_true, prob, threshold, n_bootstrap).items():
        figures[f"{split}_{name}_ci_low"], figures[f"{split}_{name}_ci_high"] = low, high
    return figures
