"""The one producer of a registered version: Keras members and their contract
(serving/contract.py) logged as an MLflow pyfunc model from code (pneumo_exp.serving.model),
no pickle, with a snapshot of the package's code, so that the version loads as it was made;
then registered with the tags derived from the contract and the lineage its caller gives.
Promotion, adaptation and a site's search all write versions through `write_version`."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import tensorflow as tf
from mlflow.entities.model_registry import ModelVersion

import pneumo_exp
from pneumo_exp.serving.batch_norm import batch_norm_layers
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.model import MODEL_CODE, member_artifact, signature
from pneumo_exp.tracking.names import PACKAGED_MODEL


def write_version(name: str, contract: VersionContract, models: Sequence[Any],
                  lineage: Mapping[str, str]) -> ModelVersion:
    """Into the active run: the Keras `models` (one per member of `contract`, in order) and
    the contract, as one pyfunc model that averages the members' probabilities over the
    views; then a new version of the registered model `name`, tagged with `lineage` (where
    it came from) and the contract's own tags. A contract that lacks what the checks read
    (VersionContract.missing: whom it is for, its views, validation's features) is refused
    before anything is logged."""
    if len(models) != len(contract.members):
        raise ValueError(f"{len(models)} networks for a contract of "
                         f"{len(contract.members)} members")
    lacking = contract.missing(adaptable=all(batch_norm_layers(m) for m in models))
    if lacking:
        raise ValueError(f"a version of {name} must carry its checks and this one lacks "
                         f"{', '.join(lacking)}: nothing registered")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        artifacts = {}
        for i, model in enumerate(models):
            path = Path(tmp) / f"member_{i}.keras"
            model.save(path)
            artifacts[member_artifact(i)] = str(path)
        artifacts.update(contract.artifact_files(Path(tmp)))
        logged = mlflow.pyfunc.log_model(
            name=PACKAGED_MODEL, python_model=str(MODEL_CODE), artifacts=artifacts,
            code_paths=[str(Path(pneumo_exp.__file__).parent)],
            model_config=contract.to_dict(), signature=signature(),
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}",
                              f"mlflow=={mlflow.__version__}", "pillow", "pandas"])
    return mlflow.register_model(logged.model_uri, name,
                                 tags={**lineage, **contract.tags()})
