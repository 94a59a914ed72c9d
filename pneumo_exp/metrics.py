"""Binary classification figures from labels and probabilities (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                   prefix: str = "") -> dict[str, float]:
    """Accuracy, AUC, sensitivity (recall of PNEUMONIA), specificity, precision, F1, loss and
    the confusion counts, with `prefix` on every name (e.g. 'val_')."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y_true)) == 2
    out = {
        "accuracy": accuracy_score(y_true, pred),
        "auc": roc_auc_score(y_true, prob) if both_classes else float("nan"),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": f1_score(y_true, pred, zero_division=0.0),
        "loss": log_loss(y_true, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1]),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
    }
    return {f"{prefix}{k}": float(v) for k, v in out.items()}
