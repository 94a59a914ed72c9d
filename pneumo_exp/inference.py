"""Using a registered model: predict on image files and folders, evaluate on a labelled
folder. Everything goes through the pyfunc model, i.e. exactly what a server runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation import log_evaluation
from pneumo_exp.serving import UNREADABLE, images_frame
from pneumo_exp.tracking import TAG_ROLE, connect, experiment_id

CHUNK = 256  # files per predict call, to bound memory on large folders
EVALUATION_EXPERIMENT = "pneumo-exp/evaluations"


def load(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise UserError(f"cannot load model {model_uri}: {str(e).splitlines()[0]}. List the "
                        "registered models in the MLflow UI (make ui), or run make promote.") from e


def describe_version(model_uri: str) -> str:
    """Which registered version answers for a models:/ URI, with its aliases."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if not model_uri.startswith("models:/"):
        return model_uri
    client = connect()
    try:
        name, number = get_model_name_and_version(client, model_uri)
        v = client.get_model_version(name, number)
    except (mlflow.exceptions.MlflowException, ValueError):
        return model_uri
    aliases = f", aliases {', '.join(v.aliases)}" if v.aliases else ""
    members = int(v.tags.get("pneumo.members", "1") or 1)
    what = v.tags.get("pneumo.arch", "?") + (f" x{members}" if members > 1 else "")
    site = f", adapted to site {v.tags['pneumo.site']}" if "pneumo.site" in v.tags else ""
    return f"{model_uri}: {name} version {v.version} ({what}{site}{aliases})"


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the files under folders (recursively, hidden ones left out)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist.")
    return files


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
    with mlflow.start_run(experiment_id=experiment_id(client, EVALUATION_EXPERIMENT),
                          run_name=f"evaluate-{folder.name}",
                          tags={TAG_ROLE: "evaluation", "pneumo.model_uri": model_uri}):
        mlflow.log_params({"model_uri": model_uri, "data": str(folder),
                           "files": len(files), "unreadable_files": int((~readable).sum())})
        mlflow.log_table(predictions, "predictions.json")
        figures = log_evaluation(labels[readable],
                                 predictions["probability"].to_numpy(float)[readable], threshold,
                                 "eval", n_bootstrap)
        counts = {f"eval_{name}_images": float((labels[readable] == i).sum())
                  for i, name in enumerate(CLASS_NAMES)}
        mlflow.log_metrics(counts)
    return {**figures, **counts, "eval_unreadable_images": float((~readable).sum())}
