"""A registered version's model: Keras members + preprocessing + temperature + threshold,
logged as an MLflow pyfunc model from code (pneumo_exp.serving.model), no pickle, with a
snapshot of the package's code, so that the version loads as it was made."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import tensorflow as tf

import pneumo_exp
from pneumo_exp.serving.model import MODEL_CODE, Member, member_artifact, signature
from pneumo_exp.tracking.names import PACKAGED_MODEL


def log_packaged_model(members: Sequence[Member], threshold: float,
                       temperature: float = 1.0) -> mlflow.models.model.ModelInfo:
    """Into the active run: the members' Keras files, their preprocessing, the temperature
    and the threshold, as one pyfunc model that averages the members' probabilities."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        artifacts = {}
        for i, member in enumerate(members):
            path = Path(tmp) / f"member_{i}.keras"
            member.model.save(path)
            artifacts[member_artifact(i)] = str(path)
        return mlflow.pyfunc.log_model(
            name=PACKAGED_MODEL, python_model=str(MODEL_CODE), artifacts=artifacts,
            code_paths=[str(Path(pneumo_exp.__file__).parent)],
            model_config={"members": [{"image_size": m.image_size, "channels": m.channels}
                                      for m in members],
                          "threshold": float(threshold), "temperature": float(temperature)},
            signature=signature(),
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}",
                              f"mlflow=={mlflow.__version__}", "pillow", "pandas"])
