"""What runs record: the data a search or cv used, per-epoch metrics, and a trained
classifier's validation figures, plots and model."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pneumo_exp import plots
from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.metrics import binary_metrics

TAG_DATA = "pneumo.data_fingerprint"
MODEL_NAME = "model"  # artifact name of the logged model in a trial run


def log_data_description(client: MlflowClient, run_id: str, root: Path,
                         parts: Mapping[str, LabeledImages], skipped: Sequence[tuple[str, str]],
                         fingerprint: str) -> None:
    """On a search or cv run: source, sizes, class counts, skipped files, the fingerprint,
    and the parts as MLflow datasets (with content digests)."""
    params: dict[str, Any] = {"data.source": str(root), "data.skipped_files": len(skipped)}
    for split, part in parts.items():
        params[f"data.{split}_size"] = len(part)
        for cls, count in part.class_counts().items():
            params[f"data.{split}_{cls}"] = count
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v))
                                     for k, v in params.items()])
    client.set_tag(run_id, TAG_DATA, fingerprint)
    client.log_text(run_id, "".join(f"{n}\t{r}\n" for n, r in skipped) or "none\n",
                    "data/skipped_files.tsv")
    inputs = []
    for split, part in parts.items():
        with warnings.catch_warnings():  # a local path is a local source; MLflow asks twice
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_numpy(part.images, targets=part.labels, source=str(root),
                                        name=f"{root.name}-{split}")
        inputs.append(DatasetInput(ds._to_mlflow_entity(),
                                   [InputTag("mlflow.data.context", split)]))
    client.log_inputs(run_id, datasets=inputs)


def log_epoch_metrics(client: MlflowClient, run_id: str, epoch: int,
                      logs: Mapping[str, Any]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, epoch) for k, v in logs.items()
               if isinstance(v, int | float | np.floating | np.integer)]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_classifier(model: keras.Model, data: LabeledImages, history: Mapping[str, Sequence[float]],
                   objective: str, direction: str, initial_epoch: int = 0,
                   log_model: bool = True) -> dict[str, float]:
    """Into the active run: curves, validation confusion matrix and ROC, the figures of the
    best checkpoint (`best_val_*`), and the model with its signature."""
    prob = model.predict(data.images, batch_size=256, verbose=0).ravel()
    figures = binary_metrics(data.labels, prob, prefix="best_val_")
    values = history.get(objective, [])
    if values:
        pick = np.nanargmin if direction == "min" else np.nanargmax
        figures["best_epoch"] = float(initial_epoch + int(pick(values)))
    mlflow.log_metrics(figures)
    counts = [[int(figures["best_val_tn"]), int(figures["best_val_fp"])],
              [int(figures["best_val_fn"]), int(figures["best_val_tp"])]]
    mlflow.log_dict({"labels": list(CLASS_NAMES), "rows_true_cols_pred": counts},
                    "plots/val_confusion_matrix.json")
    for name, fig in (("curves", plots.curves_figure(history)),
                      ("val_confusion_matrix", plots.confusion_figure(
                          data.labels, (prob >= 0.5).astype(int), "validation, threshold 0.5")),
                      ("val_roc", plots.roc_figure(data.labels, prob, "validation ROC"))):
        mlflow.log_figure(fig, f"plots/{name}.png")
        plots.close(fig)
    if log_model:
        # An uncompiled copy: inference needs the weights, not the optimizer state.
        inference = keras.models.clone_model(model)
        inference.set_weights(model.get_weights())
        sample = data.images[:4].astype(np.float32)
        mlflow.keras.log_model(
            inference, name=MODEL_NAME,
            signature=infer_signature(sample, inference.predict(sample, verbose=0)),
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"])
    return figures
