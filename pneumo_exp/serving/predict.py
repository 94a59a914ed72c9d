"""Using a registered model: load it, predict on image files and folders, evaluate it on a
labelled folder. Everything goes through the pyfunc model, i.e. exactly what a server runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.images import files_fingerprint, image_files
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.serving.model import UNREADABLE, images_frame
from pneumo_exp.tracking.figures import log_evaluation
from pneumo_exp.tracking.names import (
    EVALUATION_EXPERIMENT,
    PREDICTIONS,
    ROLE_EVALUATION,
    TAG_MODEL_URI,
)
from pneumo_exp.tracking.runs import start_run
from pneumo_exp.tracking.store import connect, experiment_id

CHUNK = 256  # files per predict call, to bound memory on large folders


def load(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise UserError(f"cannot load model {model_uri}: {str(e).splitlines()[0]}. List the "
                        "registered models in the MLflow UI (make ui), or run make promote.") from e


def predict_files(model: mlflow.pyfunc.PyFuncModel, files: Sequence[Path]) -> pd.DataFrame:
    """file, probability of PNEUMONIA, label at the model's threshold ('unreadable' for files
    that are not images)."""
    parts = [model.predict(images_frame(files[i:i + CHUNK])) for i in range(0, len(files), CHUNK)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"probability": [], "label": []})
    out.insert(0, "file", [str(f) for f in files])
    return out


def labelled_root(folder: Path) -> Path:
    """FOLDER if it holds NORMAL/, else FOLDER/test (a dataset root)."""
    return folder if (folder / CLASS_NAMES[0]).is_dir() else folder / "test"


def labelled_files(folder: Path) -> tuple[list[Path], np.ndarray]:
    """FOLDER/{NORMAL,PNEUMONIA}/ or FOLDER/test/{NORMAL,PNEUMONIA}/."""
    root = labelled_root(folder)
    files, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        class_dir = root / name
        if not class_dir.is_dir():
            raise DataError(f"{class_dir} is missing: give a folder with NORMAL/ and PNEUMONIA/ "
                            "(or a dataset root with test/NORMAL and test/PNEUMONIA).")
        found = image_files([class_dir])
        files += found
        labels += [label] * len(found)
    return files, np.array(labels)


def evaluate_folder(model_uri: str, folder: Path, n_bootstrap: int = 1000) -> dict[str, float]:
    """Figures of a registered model on a labelled folder, logged as an evaluation run."""
    model = load(model_uri)
    files, labels = labelled_files(folder)
    predictions = predict_files(model, files)
    readable = (predictions["label"] != UNREADABLE).to_numpy()
    threshold = float(model.model_config["threshold"])
    client = connect()
    with start_run(experiment_id(client, EVALUATION_EXPERIMENT), f"evaluate-{folder.name}",
                   ROLE_EVALUATION, files_fingerprint(labelled_root(folder), files),
                   {TAG_MODEL_URI: model_uri}):
        mlflow.log_params({"model_uri": model_uri, "data": str(folder),
                           "files": len(files), "unreadable_files": int((~readable).sum())})
        mlflow.log_table(predictions, PREDICTIONS)
        figures = log_evaluation(labels[readable],
                                 predictions["probability"].to_numpy(float)[readable], threshold,
                                 "eval", n_bootstrap)
        counts = {f"eval_{name}_images": float((labels[readable] == i).sum())
                  for i, name in enumerate(CLASS_NAMES)}
        mlflow.log_metrics(counts)
    return {**figures, **counts, "eval_unreadable_images": float((~readable).sum())}
