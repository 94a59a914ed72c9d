"""Promote the best validation model to the MLflow Model Registry, evaluated once on test.

`promote` picks the trial run with the best validation objective, or the k best as an
ensemble (of one architecture, or of all), re-creates their searches' validation set, fits
a temperature and chooses the decision threshold on it, packages the members with their
preprocessing as one pyfunc model, evaluates it on the test split in an evaluation run
(the only use of the test split), and registers it. A new version gets the alias
`challenger`, and `champion` when its validation objective beats the current champion's.
Promoting runs that already have a version does nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
import numpy as np
import yaml
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp import model_card
from pneumo_exp.calibration import apply_temperature, calibration_figures, fit_temperature
from pneumo_exp.config import (
    ExperimentConfig,
    RegistryConfig,
    architectures,
    config_from_dict,
    load_config,
)
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.errors import ConfigError, UserError
from pneumo_exp.evaluation import bootstrap_ci, choose_threshold, log_evaluation
from pneumo_exp.metrics import binary_metrics
from pneumo_exp.packaging import log_packaged_model
from pneumo_exp.serving import Member
from pneumo_exp.tracking import (
    TAG_ARCH,
    TAG_DATA,
    TAG_ROLE,
    TAG_TRIAL,
    code_version,
    connect,
)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_SOURCES = "pneumo.source_run_ids"  # the trial runs of a version, comma-separated


@dataclass(frozen=True)
class Promotion:
    version: ModelVersion
    created: bool
    champion: str  # version number holding the champion alias afterwards
    figures: dict[str, float]


@dataclass(frozen=True)
class Candidate:
    """A trial run to package, with its search's configuration and validation set."""

    trial: Run
    cfg: ExperimentConfig
    search: Run

    @property
    def label(self) -> str:
        return (f"{self.trial.data.tags.get(TAG_ARCH, self.cfg.arch)} trial "
                f"{self.trial.data.tags.get(TAG_TRIAL, '?')}")


def objective_of(arch: str | None) -> tuple[str, str, list[str]]:
    """(objective, direction, experiment names) of one architecture, or of all of them; a
    promotion across architectures needs them to share the objective."""
    configs = [load_config(a) for a in ([arch] if arch else architectures())]
    objectives = {c.search.objective for c in configs}
    if len(objectives) > 1:
        listed = ", ".join(f"{c.arch}: {c.search.objective}" for c in configs)
        raise ConfigError(f"the architectures optimize different objectives ({listed}), so "
                          "their trials cannot be ranked together: promote one ARCH at a time.")
    return (configs[0].search.objective, configs[0].search.direction,
            sorted({c.experiment_name for c in configs}))


VALIDATION_PARAMS = ("data.source", "data.validation", "data.val_fraction", "search.seed")


def best_trial_runs(client: MlflowClient, arch: str | None, top: int = 1) -> list[Run]:
    """The best finished trial run by `best_<objective>` (each trial's best checkpoint, the
    figure its search's oracle ranked), then the next best validated on the same images
    (the same dataset, validation split and seed), up to `top` in all."""
    objective, direction, names = objective_of(arch)
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n))]
    order = "DESC" if direction == "max" else "ASC"
    runs = client.search_runs(
        ids, f"tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'FINISHED' and "
        f"metrics.best_{objective} > -1e300",
        order_by=[f"metrics.best_{objective} {order}"]) if ids else []
    if not runs:
        what = f"of {arch} " if arch else ""
        raise UserError(f"no finished trial {what}to promote: run `make search"
                        f"{' ARCH=' + arch if arch else ''}` first.")
    parents: dict[str, tuple[str | None, ...]] = {}

    def validation(run: Run) -> tuple[str | None, ...]:
        parent = run.data.tags[MLFLOW_PARENT_RUN_ID]
        if parent not in parents:
            params = client.get_run(parent).data.params
            parents[parent] = tuple(params.get(k) for k in VALIDATION_PARAMS)
        return parents[parent]

    # stops at `top`: each new search met costs a read of its parent run
    same = list(itertools.islice((r for r in runs if validation(r) == validation(runs[0])), top))
    if len(same) < top:
        log.info("Promoting the %d finished trial(s) validated like the best one (TOP=%d "
                 "asks for up to %d).", len(same), top, top)
    return same


def versions_of_runs(client: MlflowClient, name: str, run_ids: Sequence[str]) -> list[
        ModelVersion]:
    """The versions (not site adaptations) packaging exactly these trial runs."""
    key = ",".join(sorted(run_ids))
    return [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(TAG_SOURCES) == key and "pneumo.site" not in v.tags]


def search_config(client: MlflowClient, trial: Run) -> tuple[ExperimentConfig, Run]:
    """The configuration of the search a trial belongs to, from its parent's config.yaml."""
    parent = client.get_run(trial.data.tags[MLFLOW_PARENT_RUN_ID])
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/config.yaml")
    return config_from_dict(yaml.safe_load(text)), parent


def _validation_sets(candidates: Sequence[Candidate]) -> list[LabeledImages]:
    """Each member's validation images at its own preprocessing; one set of patients."""
    sets = []
    for c in candidates:
        data = load_training_data(c.cfg.data, c.cfg.search.seed)
        if data.fingerprint != c.search.data.tags.get(TAG_DATA):
            raise UserError(f"the data of search {c.search.info.run_name} ({data.root}) "
                            "changed since it ran (its fingerprint differs), so its validation "
                            "set cannot be rebuilt to choose the threshold. Search again, then "
                            "promote.")
        sets.append(data.val)
    for c, s in zip(candidates[1:], sets[1:], strict=True):
        if not np.array_equal(s.names, sets[0].names):
            raise UserError(f"{c.label} was validated on other images than "
                            f"{candidates[0].label} (another dataset, seed or validation "
                            "split), so an ensemble of them has no common validation set: "
                            "promote them separately.")
    return sets


def _test_sets(candidates: Sequence[Candidate]) -> list[LabeledImages]:
    """Each member's test images (of the dataset its search used) at its preprocessing."""
    return [load_split(open_source(c.search.data.params["data.source"]), "test",
                       c.cfg.data.image_size, c.cfg.data.channels).data for c in candidates]


def _mean_prob(members: Sequence[Member], images: Sequence[LabeledImages]) -> np.ndarray:
    return np.mean([m.model.predict(x.images, batch_size=256, verbose=0).ravel()
                    for m, x in zip(members, images, strict=True)], axis=0)


def promote(registry: RegistryConfig, arch: str | None = None, run_id: str | None = None,
            top: int | None = None) -> Promotion:
    """Register the ensemble of the up to `top` (registry.top) best trials validated alike,
    or the one trial `run_id`."""
    client = connect()
    top = registry.top if top is None else top
    if top < 1:
        raise ConfigError(f"TOP must be an integer >= 1; got {top}.")
    trials = [_trial_run(client, run_id)] if run_id else best_trial_runs(client, arch, top)
    name = registry.model_name
    sources = [t.info.run_id for t in trials]
    existing = versions_of_runs(client, name, sources)
    if existing:
        return Promotion(existing[0], False, _alias_version(client, name, CHAMPION) or "-", {})

    candidates = [Candidate(t, *search_config(client, t)) for t in trials]
    objective, direction = candidates[0].cfg.search.objective, candidates[0].cfg.search.direction
    members = [Member(_trial_model(c.trial), c.cfg.data.image_size, c.cfg.data.channels)
               for c in candidates]
    val_sets = _validation_sets(candidates)
    y_val = val_sets[0].labels
    raw_val = _mean_prob(members, val_sets)
    temperature = fit_temperature(y_val, raw_val)
    val_prob = apply_temperature(raw_val, temperature)
    threshold = choose_threshold(y_val, val_prob, registry.min_sensitivity)
    test_sets = _test_sets(candidates)
    y_test = test_sets[0].labels
    raw_test = _mean_prob(members, test_sets)
    test_prob = apply_temperature(raw_test, temperature)

    val = {f"val_{k}": v for k, v in binary_metrics(y_val, val_prob).items()}
    val.update({f"val_{k}_at_thr": v for k, v in binary_metrics(
        y_val, val_prob, threshold).items() if k in ("sensitivity", "specificity", "accuracy")})
    val.update(calibration_figures(y_val, val_prob, "val_"))
    val.update(calibration_figures(y_val, raw_val, "val_uncalibrated_"))
    val["val_uncalibrated_loss"] = binary_metrics(y_val, raw_val)["loss"]
    for key, (low, high) in bootstrap_ci(y_val, val_prob, threshold,
                                         registry.bootstrap).items():
        val[f"val_{key}_ci_low"], val[f"val_{key}_ci_high"] = low, high
    first = candidates[0]
    arch_name = ",".join(dict.fromkeys(c.trial.data.tags.get(TAG_ARCH, c.cfg.arch)
                                       for c in candidates))
    title = (f"{first.label}" if len(candidates) == 1
             else f"ensemble of {len(candidates)}: " + ", ".join(c.label for c in candidates))
    with mlflow.start_run(experiment_id=first.trial.info.experiment_id,
                          run_name="evaluation-" + title.replace(" ", "-").replace(",", ""),
                          tags={TAG_ROLE: "evaluation", TAG_ARCH: arch_name,
                                TAG_SOURCES: ",".join(sorted(sources)),
                                TAG_DATA: first.search.data.tags.get(TAG_DATA, ""),
                                **code_version()}) as run:
        # (the packaged model logs its config, members, threshold and temperature, as params)
        mlflow.log_params({"source_run_ids": ",".join(sources),
                           "threshold_rule": f"max specificity with calibrated val "
                                             f"sensitivity >= {registry.min_sensitivity}",
                           "test_size": len(y_test)})
        mlflow.log_metrics(val)
        figures = log_evaluation(y_test, test_prob, threshold, "test", registry.bootstrap,
                                 title=f"{title}, test split", uncalibrated=raw_test)
        logged = log_packaged_model(members, threshold, temperature)
    tags = {
        TAG_SOURCES: ",".join(sorted(sources)), "pneumo.members": str(len(members)),
        "pneumo.evaluation_run_id": run.info.run_id,
        "pneumo.search_run_ids": ",".join(dict.fromkeys(c.search.info.run_id
                                                        for c in candidates)),
        "pneumo.arch": arch_name, "pneumo.data_fingerprint": first.search.data.tags.get(
            TAG_DATA, ""), "pneumo.threshold": f"{threshold:.6f}",
        "pneumo.temperature": f"{temperature:.6f}",
        "pneumo.objective": objective, "pneumo.objective_value": str(val[objective]),
        "pneumo.hyperparameters": json.dumps([c.trial.data.params for c in candidates]
                                             if len(candidates) > 1 else
                                             first.trial.data.params, sort_keys=True)[:5000],
        **{f"pneumo.{k}": f"{v:.4f}" for k, v in val.items()
           if k in ("val_auc", "val_accuracy", "val_loss", "val_sensitivity_at_thr",
                    "val_specificity_at_thr", "val_ece", "val_uncalibrated_ece")},
    }
    version = mlflow.register_model(logged.model_uri, name, tags=tags)
    card = model_card.for_promotion(client, name, str(version.version), candidates, val,
                                    figures, threshold, temperature, registry)
    model_card.publish(client, name, str(version.version), card, run.info.run_id)
    champion = _move_aliases(client, name, str(version.version), direction)
    return Promotion(client.get_model_version(name, version.version), True, champion, figures)


def _trial_run(client: MlflowClient, run_id: str) -> Run:
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise UserError(f"no run {run_id} in the store {mlflow.get_tracking_uri()}.") from e
    if run.data.tags.get(TAG_ROLE) != "trial" or run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is not a finished trial of a search; promote takes "
                        "the id of a 'trial-N' run.")
    return run


def _trial_model(trial: Run) -> object:
    models = mlflow.search_logged_models(
        experiment_ids=[trial.info.experiment_id],
        filter_string=f"source_run_id = '{trial.info.run_id}'", output_format="list")
    if not models:
        raise UserError(f"trial run {trial.info.run_id} has no logged model to promote.")
    return mlflow.keras.load_model(models[0].model_uri)


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
        new = client.get_model_version(name, version).tags
        old = client.get_model_version(name, champion).tags
        if new["pneumo.objective"] != old["pneumo.objective"]:
            log.warning("version %s was chosen by %s and the champion (version %s) by %s: "
                        "they do not compare, so the champion stays.", version,
                        new["pneumo.objective"], champion, old["pneumo.objective"])
            return champion
        a, b = float(new["pneumo.objective_value"]), float(old["pneumo.objective_value"])
        if not (a > b if direction == "max" else a < b):
            return champion
    client.set_registered_model_alias(name, CHAMPION, version)
    return version
