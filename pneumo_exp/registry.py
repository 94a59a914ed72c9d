"""Promote the best validation model to the MLflow Model Registry, evaluated once on test.

`promote` picks the trial run with the best validation objective (of one architecture or
of all), re-creates its search's data to choose the decision threshold on validation,
packages the model with its preprocessing and threshold as a pyfunc model, evaluates it on
the test split in an evaluation run (the only use of the test split), and registers it. A
new version gets the alias `challenger`, and `champion` when its validation objective beats
the current champion's. Promoting a run that already has a version does nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import tensorflow as tf
import yaml
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import pneumo_exp
from pneumo_exp.config import ExperimentConfig, RegistryConfig, config_from_dict
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.errors import UserError
from pneumo_exp.evaluation import choose_threshold, log_evaluation
from pneumo_exp.metrics import binary_metrics
from pneumo_exp.records import TAG_DATA
from pneumo_exp.serving import MODEL_CODE, signature
from pneumo_exp.tracking import TAG_ARCH, TAG_ROLE, TAG_TRIAL, code_version, connect

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
PACKAGED_MODEL = "classifier"


@dataclass(frozen=True)
class Promotion:
    version: ModelVersion
    created: bool
    champion: str  # version number holding the champion alias afterwards
    figures: dict[str, float]


def best_trial_run(client: MlflowClient, arch: str | None, objective: str = "val_auc",
                   direction: str = "max") -> Run:
    """The finished trial run with the best `best_<objective>` (the checkpoint's figure)."""
    if arch:
        names = [f"pneumo-exp/{arch}"]
    else:
        names = [e.name for e in client.search_experiments(
            filter_string="name LIKE 'pneumo-exp/%'")]
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n))]
    order = "DESC" if direction == "max" else "ASC"
    runs = client.search_runs(
        ids, f"tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'FINISHED'",
        order_by=[f"metrics.best_{objective} {order}"], max_results=1) if ids else []
    if not runs or f"best_{objective}" not in runs[0].data.metrics:
        what = f"of {arch} " if arch else ""
        raise UserError(f"no finished trial {what}to promote: run `make search"
                        f"{' ARCH=' + arch if arch else ''}` first.")
    return runs[0]


def versions_of_run(client: MlflowClient, name: str, run_id: str) -> list[ModelVersion]:
    return [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get("pneumo.source_run_id") == run_id]


def search_config(client: MlflowClient, trial: Run) -> tuple[ExperimentConfig, Run]:
    """The configuration of the search a trial belongs to, from its parent's config.yaml."""
    parent = client.get_run(trial.data.tags[MLFLOW_PARENT_RUN_ID])
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/config.yaml")
    return config_from_dict(yaml.safe_load(text)), parent


def promote(registry: RegistryConfig, arch: str | None = None, run_id: str | None = None,
            objective: str = "val_auc", direction: str = "max") -> Promotion:
    client = connect()
    trial = client.get_run(run_id) if run_id else best_trial_run(client, arch, objective,
                                                                  direction)
    name = registry.model_name
    existing = versions_of_run(client, name, trial.info.run_id)
    if existing:
        champion = _alias_version(client, name, CHAMPION)
        return Promotion(existing[0], False, champion or "-", {})

    cfg, search = search_config(client, trial)
    data = load_training_data(cfg.data, cfg.search.seed)
    if data.fingerprint != search.data.tags.get(TAG_DATA):
        raise UserError(f"the data of search {search.info.run_name} ({data.root}) changed since "
                        "it ran (its fingerprint differs), so its validation set cannot be "
                        "rebuilt to choose the threshold. Search again, then promote.")
    model = _trial_model(trial)
    val_prob = model.predict(data.val.images, batch_size=256, verbose=0).ravel()
    threshold = choose_threshold(data.val.labels, val_prob, registry.min_sensitivity)
    test = load_split(open_source(data.root), "test", cfg.data.image_size, cfg.data.channels)
    test_prob = model.predict(test.data.images, batch_size=256, verbose=0).ravel()

    arch_name = trial.data.tags.get(TAG_ARCH, cfg.arch)
    trial_id = trial.data.tags.get(TAG_TRIAL, "?")
    val = {f"val_{k}": v for k, v in binary_metrics(data.val.labels, val_prob).items()}
    val.update({f"val_{k}_at_thr": v for k, v in binary_metrics(
        data.val.labels, val_prob, threshold).items() if k in ("sensitivity", "specificity")})
    with mlflow.start_run(experiment_id=trial.info.experiment_id,
                          run_name=f"evaluation-{arch_name}-trial-{trial_id}",
                          tags={TAG_ROLE: "evaluation", TAG_ARCH: arch_name,
                                "pneumo.source_run_id": trial.info.run_id,
                                TAG_DATA: data.fingerprint, **code_version()}) as run:
        mlflow.log_params({"source_run_id": trial.info.run_id, "threshold_rule":
                           f"max specificity with val sensitivity >= {registry.min_sensitivity}",
                           "test_split": str(data.root / "test"), "test_size": len(test.data)})
        mlflow.log_metrics(val)
        figures = log_evaluation(test.data.labels, test_prob, threshold, "test",
                                 registry.bootstrap)
        logged = _log_packaged_model(model, cfg, threshold)
    tags = {
        "pneumo.source_run_id": trial.info.run_id, "pneumo.evaluation_run_id": run.info.run_id,
        "pneumo.search_run_id": search.info.run_id, "pneumo.arch": arch_name,
        "pneumo.data_fingerprint": data.fingerprint, "pneumo.threshold": f"{threshold:.6f}",
        "pneumo.objective": objective, "pneumo.objective_value":
            str(trial.data.metrics[f"best_{objective}"]),
        "pneumo.hyperparameters": json.dumps(trial.data.params, sort_keys=True)[:5000],
        **{f"pneumo.{k}": f"{v:.4f}" for k, v in val.items()
           if k in ("val_auc", "val_accuracy", "val_loss", "val_sensitivity_at_thr",
                    "val_specificity_at_thr")},
    }
    version = mlflow.register_model(logged.model_uri, name, tags=tags)
    client.update_model_version(name, version.version, description=(
        f"{arch_name}, trial {trial_id} of search {search.info.run_name}. Validation "
        f"{objective} {trial.data.metrics[f'best_{objective}']:.4f}; test accuracy "
        f"{figures['test_accuracy']:.4f}, AUC {figures['test_auc']:.4f} (evaluation run "
        f"{run.info.run_id}); decision threshold {threshold:.3f}."))
    champion = _move_aliases(client, name, str(version.version), direction)
    return Promotion(client.get_model_version(name, version.version), True, champion, figures)


def _trial_model(trial: Run) -> keras.Model:
    models = mlflow.search_logged_models(
        experiment_ids=[trial.info.experiment_id],
        filter_string=f"source_run_id = '{trial.info.run_id}'", output_format="list")
    if not models:
        raise UserError(f"trial run {trial.info.run_id} has no logged model to promote.")
    return mlflow.keras.load_model(models[0].model_uri)


def _log_packaged_model(model: keras.Model, cfg: ExperimentConfig,
                        threshold: float) -> mlflow.models.model.ModelInfo:
    """The Keras model + preprocessing + threshold as a pyfunc model in the active run."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        path = Path(tmp) / "model.keras"
        model.save(path)
        return mlflow.pyfunc.log_model(
            name=PACKAGED_MODEL, python_model=str(MODEL_CODE),
            artifacts={"keras_model": str(path)},
            code_paths=[str(Path(pneumo_exp.__file__).parent)],
            model_config={"image_size": cfg.data.image_size, "channels": cfg.data.channels,
                          "threshold": threshold},
            signature=signature(),
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}",
                              f"mlflow=={mlflow.__version__}", "pillow", "pandas"])


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _move_aliases(client: MlflowClient, name: str, version: str, direction: str) -> str:
    """challenger -> the new version; champion -> it too if it beats the champion."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = _alias_version(client, name, CHAMPION)
    if champion is not None:
        new = float(client.get_model_version(name, version).tags["pneumo.objective_value"])
        old = float(client.get_model_version(name, champion).tags["pneumo.objective_value"])
        if not (new > old if direction == "max" else new < old):
            return champion
    client.set_registered_model_alias(name, CHAMPION, version)
    return version
