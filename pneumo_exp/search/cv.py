"""k-fold cross-validation of one configuration by patient, tracked in MLflow: a nested run
per fold, the mean and standard deviation on the parent (docs/searching.md,
"Cross-validation")."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from mlflow.tracking import MlflowClient

from pneumo_exp.config import ExperimentConfig
from pneumo_exp.data.dataset import resolve_root
from pneumo_exp.data.pipeline import make_dataset
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.data.split import group_codes, group_kfold
from pneumo_exp.errors import ConfigError, InterruptedByUser, UserError
from pneumo_exp.hypermodels import build_hypermodel
from pneumo_exp.search.callbacks import training_callbacks
from pneumo_exp.search.run import pin_threads
from pneumo_exp.text import literal
from pneumo_exp.tracking.names import (
    ROLE_CV,
    ROLE_FOLD,
    ROLE_SEARCH,
    TAG_ARCH,
    TAG_BEST_RUN,
    TAG_FOLD,
    TAG_ROLE,
)
from pneumo_exp.tracking.queries import every, quoted
from pneumo_exp.tracking.runs import child_run, create_parent_run, log_data_description, log_metrics
from pneumo_exp.tracking.store import connect, experiment_id
from pneumo_exp.tracking.trials import log_classifier

log = logging.getLogger(__name__)

FIGURES = ("accuracy", "auc", "loss", "sensitivity", "specificity")


@dataclass(frozen=True)
class CVResult:
    experiment_id: str
    parent_run_id: str
    fold_figures: list[dict[str, float]]
    summary: dict[str, float]
    hyperparameters: dict[str, Any]
    fold_groups: list[np.ndarray]  # patient ids of each fold's validation part


def best_hyperparameters(client: MlflowClient, experiment: str, arch: str) -> tuple[
        dict[str, Any], str]:
    """Hyperparameters of the best trial of the latest finished search, and its run id."""
    searches = every(
        client.search_runs, [experiment],
        f"tags.`{TAG_ROLE}` = {quoted(ROLE_SEARCH)} and tags.`{TAG_ARCH}` = {quoted(arch)} and "
        "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    for search in searches:
        best_run_id = search.data.tags.get(TAG_BEST_RUN)
        if best_run_id:
            params = client.get_run(best_run_id).data.params
            return ({k: literal(v) for k, v in params.items() if not k.startswith("tuner/")},
                    best_run_id)
    raise UserError(f"no finished search of {arch} with a completed trial: run "
                    f"`make search ARCH={arch}` first, or cross-validate the study's "
                    "configuration (FROM=default).")


def run_cv(cfg: ExperimentConfig, folds: int = 5, source: str = "default",
           verbose: int = 2) -> CVResult:
    if folds < 2:
        raise ConfigError(f"'folds' must be an integer >= 2; got {folds}.")
    if source not in ("default", "best"):
        raise ConfigError(f"'from' must be default or best; got {source!r}.")
    s, t = cfg.search, cfg.train
    pin_threads(t.threads)
    started = time.time()
    root = resolve_root(cfg.data.root)
    split = load_split(open_source(root), "train", cfg.data.image_size, cfg.data.channels)
    data = split.data
    client = connect()
    hypermodel = build_hypermodel(cfg, data.labels)
    experiment = experiment_id(client, cfg.experiment_name, hypermodel.ui_params)
    values, source_run = (best_hyperparameters(client, experiment, cfg.arch)
                          if source == "best" else ({}, ""))
    hp = kt.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    hypermodel.build(hp)  # fills every other hyperparameter with its default (the study's)
    values = dict(hp.values)

    parent = create_parent_run(
        client, experiment, cfg, f"cv-{folds}fold-{source}", ROLE_CV, split.fingerprint, {},
        {"cv.folds": folds, "cv.from": source, "cv.from_run": source_run or "-",
         **{f"hp.{k}": v for k, v in values.items()}})
    log_data_description(client, parent, root, {"train": data}, split.skipped)
    log.info("Cross-validating %s (%s configuration) in %d folds grouped by patient: MLflow "
             "parent run %s.", cfg.arch, source, folds, parent)
    figures: list[dict[str, float]] = []
    fold_groups: list[np.ndarray] = []
    status = "FAILED"
    try:
        for k, (train_idx, val_idx) in enumerate(group_kfold(folds, s.seed).split(
                data.images, data.labels, group_codes(data.groups))):
            keras.utils.set_random_seed(s.seed + k)
            train, val = data.subset(train_idx), data.subset(val_idx)
            fold_groups.append(np.unique(data.groups[val_idx]))
            with child_run(experiment, parent, f"fold-{k}", ROLE_FOLD, split.fingerprint,
                           {TAG_ARCH: cfg.arch, TAG_FOLD: str(k)}, values) as run_id:
                model = hypermodel.build(hp.copy())
                # each epoch's figures into the fold's run (a search logs at the tuner's hook)
                epochs_logged = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (
                    log_metrics(client, run_id, logs or {}, epoch)))
                history = hypermodel.fit(
                    hp, model, make_dataset(train, t.batch_size, shuffle=True, seed=s.seed + k),
                    epochs=t.epochs, callbacks=[*training_callbacks(
                        cfg, val.images, val.labels, restore_best=True), epochs_logged],
                    shuffle=False, verbose=verbose)
                figures.append(log_classifier(model, val, history.history, s.objective,
                                              s.direction, sensitivity_target=s.sensitivity_target,
                                              log_model=False,
                                              title=f"fold {k} of {cfg.arch}"))
            log.info("fold %d/%d: validation AUC %.4f, accuracy %.4f", k + 1, folds,
                     figures[-1]["best_val_auc"], figures[-1]["best_val_accuracy"])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise InterruptedByUser(f"cross-validation interrupted after {len(figures)} folds; "
                                "run it again to start over.") from None
    finally:
        summary: dict[str, float] = {"n_trials": float(folds), "n_completed_trials": len(figures),
                                     "wall_time_s": time.time() - started}
        if figures:
            for name in FIGURES:
                per_fold = np.array([f[f"best_val_{name}"] for f in figures])
                summary[f"cv_val_{name}_mean"] = float(np.mean(per_fold))
                summary[f"cv_val_{name}_std"] = float(np.std(per_fold))
            for name in ("auc", "accuracy", "loss"):  # the columns searches have too
                summary[f"best_val_{name}"] = summary[f"cv_val_{name}_mean"]
        log_metrics(client, parent, summary)
        client.set_terminated(parent, status=status)
    return CVResult(experiment, parent, figures, summary, values, fold_groups)

