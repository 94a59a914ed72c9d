"""The runs pneumo-exp writes: parent runs (a search, a cross-validation), their nested runs
(trials, folds), and the runs of a promotion, an evaluation and an adaptation. Each records
its role and its provenance (code version, data fingerprint) the same way."""

from __future__ import annotations

import contextlib
import json
import posixpath
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run
from mlflow.tracking import MlflowClient

from pneumo_exp.config import BUDGETS, ExperimentConfig, config_from_dict
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.tracking.names import (
    CONFIG_ARTIFACT,
    SKIPPED_ARTIFACT,
    TAG_ARCH,
    TAG_FAILURE,
    TAG_ROLE,
    rounded,
)
from pneumo_exp.tracking.store import provenance


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def create_parent_run(client: MlflowClient, experiment: str, cfg: ExperimentConfig,
                      run_name: str, role: str, data_fingerprint: str,
                      tags: Mapping[str, str], extra_params: Mapping[str, Any]) -> str:
    """A parent run (search or cv) carrying the configuration as params and config.yaml."""
    run = client.create_run(experiment, run_name=run_name,
                            tags={TAG_ROLE: role, TAG_ARCH: cfg.arch, **tags,
                                  **provenance(data_fingerprint)})
    params = flatten({k: v for k, v in cfg.to_dict().items() if k != "space"})
    params = {k: v for k, v in params.items() if k not in {f"search.{b}" for b in BUDGETS}}
    params.update({f"space.{k}": json.dumps(v) for k, v in cfg.space.items()})
    params.update(extra_params)
    log_params(client, run.info.run_id, params)
    client.log_text(run.info.run_id, yaml.safe_dump(cfg.to_dict()), CONFIG_ARTIFACT)
    return run.info.run_id


def parent_config(parent: Run) -> ExperimentConfig:
    """The configuration a search or cv ran with, from its parent run's config.yaml."""
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/{CONFIG_ARTIFACT}")
    return config_from_dict(yaml.safe_load(text))


def log_data_description(client: MlflowClient, run_id: str, root: Path,
                         parts: Mapping[str, LabeledImages], skipped: Sequence[tuple[str, str]]
                         ) -> None:
    """On a search or cv run: source, sizes, class counts, skipped files, and the parts as
    MLflow datasets (with content digests)."""
    params: dict[str, Any] = {"data.source": str(root), "data.skipped_files": len(skipped)}
    for split, part in parts.items():
        params[f"data.{split}_size"] = len(part)
        for cls, count in part.class_counts().items():
            params[f"data.{split}_{cls}"] = count
    log_params(client, run_id, params)
    client.log_text(run_id, "".join(f"{n}\t{r}\n" for n, r in skipped) or "none\n",
                    SKIPPED_ARTIFACT)
    inputs = []
    for split, part in parts.items():
        with warnings.catch_warnings():  # a local path is a local source; MLflow asks twice
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_numpy(part.images, targets=part.labels, source=str(root),
                                        name=f"{root.name}-{split}")
        d = ds.to_dict()  # the dataset's public form
        entity = Dataset(d["name"], d["digest"], d["source_type"], d["source"],
                         d.get("schema"), d.get("profile"))
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", split)]))
    client.log_inputs(run_id, datasets=inputs)


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                step: int = 0) -> None:
    """The numbers among `metrics` in one request: a trial's epoch (`step`), or a parent
    run's summary, whose names searches and cvs share (best_val_auc, n_trials, wall_time_s)
    so the UI compares them."""
    now = int(time.time() * 1000)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, Real)}
    client.log_batch(run_id, metrics=[Metric(k, v, now, step)
                                      for k, v in rounded(numbers).items()])


@contextlib.contextmanager
def child_run(experiment: str, parent_run_id: str, run_name: str, role: str,
              data_fingerprint: str | None, tags: Mapping[str, str],
              params: Mapping[str, Any]) -> Iterator[str]:
    """The active nested run of a trial or a fold: FAILED (with the reason) if its block
    raises an error, KILLED when it is interrupted (Ctrl-C, the time budget), FINISHED
    otherwise."""
    run = start_run(experiment, run_name, role, data_fingerprint, tags, parent_run_id)
    try:
        mlflow.log_params(dict(params))
        yield run.info.run_id
    except Exception as e:
        mlflow.set_tag(TAG_FAILURE, f"{type(e).__name__}: {e}"[:4000])
        mlflow.end_run(status="FAILED")
        raise
    except BaseException:
        mlflow.end_run(status="KILLED")
        raise
    mlflow.end_run(status="FINISHED")


def start_run(experiment: str, run_name: str, role: str, data_fingerprint: str | None,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None
              ) -> mlflow.ActiveRun:
    """The active run of a promotion, an evaluation or an adaptation (a `with` block)."""
    return mlflow.start_run(experiment_id=experiment, run_name=run_name,
                            parent_run_id=parent_run_id, tags={TAG_ROLE: role, **(tags or {}),
                                                              **provenance(data_fingerprint)})


def log_table(client: MlflowClient, run_id: str, table: Any, artifact_file: str) -> None:
    """A pandas table as an MLflow table artifact, replacing the one a resumed search logged
    before (MlflowClient.log_table appends to it)."""
    directory = posixpath.dirname(artifact_file) or None
    if artifact_file in {f.path for f in client.list_artifacts(run_id, directory)}:
        client.log_text(run_id, table.to_json(orient="split", index=False, date_format="iso"),
                        artifact_file)  # the format log_table writes
    else:
        client.log_table(run_id, table, artifact_file)
