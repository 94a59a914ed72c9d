"""What a trained classifier (a trial, a fold) records in its run: per-epoch metrics, its
validation figures, plots, Grad-CAM grids and the model. TensorFlow; the search's run
bookkeeping without it is in search_tracker.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.calibration import ECE_BINS, calibration_figures
from pneumo_exp.evaluation.metrics import binary_metrics
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.explain.gradcam import review_figures
from pneumo_exp.tracking.figures import log_confusion, log_figure
from pneumo_exp.tracking.names import TRIAL_MODEL, VAL_PREDICTIONS, gradcam_plot, rounded


def log_classifier(model: keras.Model, data: LabeledImages, history: Mapping[str, Sequence[float]],
                   objective: str, direction: str, *, sensitivity_target: float,
                   initial_epoch: int = 0, log_model: bool = True, title: str = "",
                   gradcam_images: int = 0, reliability: bool = True
                   ) -> dict[str, float]:
    """Into the active run, what docs/searching.md ("Where runs land") lists for a trial;
    `reliability` is off for a screened trial, whose calibration says little of the trained
    network."""
    prob = model.predict(data.images, batch_size=256, verbose=0).ravel()
    figures = binary_metrics(data.labels, prob, prefix="best_val_",
                             sensitivity_target=sensitivity_target)
    figures.update(calibration_figures(data.labels, prob, prefix="best_val_"))
    values = history.get(objective, [])
    figures["epochs"] = float(len(history.get("loss", [])))
    if values:
        pick = np.nanargmin if direction == "min" else np.nanargmax
        figures["best_epoch"] = float(initial_epoch + int(pick(values)))
    mlflow.log_metrics(rounded(figures))
    mlflow.log_dict({"labels": data.labels.astype(int).tolist(),
                     "probabilities": [round(float(p), 6) for p in prob]}, VAL_PREDICTIONS)
    what = f"validation, best checkpoint of {title}" if title else "validation"
    log_figure(plots.curves_figure(history, title, initial_epoch, objective, direction),
               "curves")
    log_confusion(data.labels, prob, 0.5, "val_confusion_matrix", f"{what}, threshold 0.5")
    log_figure(plots.roc_figure(data.labels, prob, f"ROC, {what}", 0.5), "val_roc")
    if reliability:
        log_figure(plots.reliability_figure(
            data.labels, prob, ECE_BINS,
            f"Reliability, {what}: ECE {figures['best_val_ece']:.3f}"), "val_reliability")
    if gradcam_images:
        for kind, fig in review_figures(model, data.images, data.labels, prob,
                                        gradcam_images, title).items():
            mlflow.log_figure(fig, gradcam_plot(kind))
            plt.close(fig)
    if log_model:
        # An uncompiled copy: inference needs the weights, not the optimizer state.
        inference = keras.models.clone_model(model)
        inference.set_weights(model.get_weights())
        sample = data.images[:4].astype(np.float32)
        mlflow.keras.log_model(
            inference, name=TRIAL_MODEL,
            signature=infer_signature(sample, inference.predict(sample, verbose=0)),
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"])
    return figures
