"""What the store holds, as tables for the console: the searches and cross-validations
(`pneumo-exp runs`), the registered versions (`pneumo-exp models`), which version answers
for a `models:/` URI, and what deleting one search takes away. MLflow only; no TensorFlow."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pneumo_exp.errors import UserError
from pneumo_exp.text import text_table
from pneumo_exp.tracking.model_uri import registered_version
from pneumo_exp.tracking.names import (
    EXPERIMENT_PREFIX,
    ROLE_CV,
    ROLE_SEARCH,
    TAG_ADAPTED_FROM_VERSION,
    TAG_ARCH,
    TAG_BASE_VERSION,
    TAG_BEST_TRIAL,
    TAG_EVALUATION_RUN,
    TAG_MEMBERS,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SITE,
    TAG_SOURCES,
    TAG_THRESHOLD,
    figure_tag,
)
from pneumo_exp.tracking.queries import every, quoted
from pneumo_exp.tracking.store import connect


def experiments(client: MlflowClient) -> dict[str, str]:
    """id -> name of the project's experiments."""
    return {e.experiment_id: e.name for e in every(
        client.search_experiments, filter_string=f"name LIKE {quoted(EXPERIMENT_PREFIX + '%')}")}


def runs_table(client: MlflowClient) -> str:
    """The searches and cross-validations, newest first."""
    ids = list(experiments(client))
    runs = [r for role in (ROLE_SEARCH, ROLE_CV) for r in every(  # tags take no IN
        client.search_runs, ids, f"tags.`{TAG_ROLE}` = {quoted(role)}")] if ids else []
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        m, t = run.data.metrics, run.data.tags
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        completed = m.get("n_completed_trials")
        trials = (f"{int(completed)}/{int(m['n_trials'])}" if completed is not None
                  and "n_trials" in m else "-")
        rows.append([started, t.get(TAG_ARCH, "?"), t.get(TAG_ROLE), run.info.run_name,
                     run.info.status, trials, m.get("best_val_auc"),
                     t.get(TAG_BEST_TRIAL, "-"),
                     f"{m['wall_time_s'] / 60:.1f}" if "wall_time_s" in m else "-",
                     run.info.run_id])
    if not rows:
        return "No search or cross-validation in this store yet: make search ARCH=aug_cnn."
    return text_table(["started", "arch", "kind", "name", "status", "trials", "best val AUC",
                       "best trial", "minutes", "run id"], rows)


def version_summary(tags: Mapping[str, str]) -> str:
    """What a version is, from its tags: `aug_cnn x3, site north (from v1)`."""
    members = int(tags.get(TAG_MEMBERS, "1") or 1)
    what = tags.get(TAG_ARCH, "?") + (f" x{members}" if members > 1 else "")
    if TAG_ADAPTED_FROM_VERSION in tags:  # adapted: from a version of the same model
        what += f", site {tags.get(TAG_SITE, '?')} (from v{tags[TAG_ADAPTED_FROM_VERSION]})"
    elif TAG_SITE in tags:  # a site version: from the base its search started from
        what += f", site {tags[TAG_SITE]} (from {tags.get(TAG_BASE_VERSION, '?')})"
    return what


def describe_version(model_uri: str) -> str:
    """Which registered version answers for a models:/ URI, with its aliases."""
    try:
        v = registered_version(connect(), model_uri)
    except UserError:
        return model_uri
    aliases = f", aliases {', '.join(v.aliases)}" if v.aliases else ""
    return f"{model_uri}: {v.name} version {v.version} ({version_summary(v.tags)}{aliases})"


def models_table(client: MlflowClient, name: str | None = None) -> str:
    filter_string = f"name = {quoted(name)}" if name else ""
    versions = sorted(every(client.search_model_versions, filter_string),
                      key=lambda v: (v.name, int(v.version)), reverse=True)
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in {v.name for v in versions}:  # search results carry no aliases
        for alias, number in client.get_registered_model(model).aliases.items():
            aliases.setdefault((model, str(number)), []).append(alias)
    rows = []
    for v in versions:
        t = v.tags
        evaluation = t.get(TAG_EVALUATION_RUN)
        test = client.get_run(evaluation).data.metrics if evaluation else {}
        sources = t.get(TAG_SOURCES, "")
        val_auc = t.get(figure_tag("val_auc"))
        rows.append([v.name, v.version,
                     ",".join(sorted(aliases.get((v.name, str(v.version)), []))) or "-",
                     version_summary(t), sources[:8] + ("…" if len(sources) > 8 else ""),
                     float(val_auc) if val_auc else None,
                     *(test.get(f"test_{k}") for k in
                       ("auc", "accuracy_at_thr", "sensitivity_at_thr", "specificity_at_thr")),
                     t.get(TAG_THRESHOLD, "-")[:5]])
    if not rows:
        return "No registered model yet: make search ARCH=aug_cnn, then make promote."
    return text_table(["model", "version", "aliases", "what", "trial run", "val AUC",
                       "test AUC", "test acc", "sens", "spec", "threshold"], rows)


def find_search(client: MlflowClient, search: str) -> Run:
    """A search's parent run, by the search's name or the run's id."""
    if re.fullmatch(r"[0-9a-f]{32}", search):
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            run = client.get_run(search)
            if run.data.tags.get(TAG_ROLE) == ROLE_SEARCH:
                return run
    ids = list(experiments(client))
    runs = every(client.search_runs, ids, f"tags.`{TAG_ROLE}` = {quoted(ROLE_SEARCH)} and "
                 f"tags.`{TAG_SEARCH}` = {quoted(search)}") if ids else []
    if not runs:
        raise UserError(f"no search named '{search}' in this store; pneumo-exp runs "
                        "lists them.")
    if len(runs) > 1:
        listed = ", ".join(f"{r.info.run_id} ({client.get_experiment(r.info.experiment_id).name})"
                           for r in runs)
        raise UserError(f"{len(runs)} searches are named '{search}' ({listed}); give the "
                        "run id of the one you mean.")
    return runs[0]


def versions_using(client: MlflowClient, run_ids: set[str]) -> list[Mapping[str, Any]]:
    """Registered versions packaging one of these trial runs."""
    return [{"name": v.name, "version": v.version}
            for v in every(client.search_model_versions, "")
            if set(filter(None, v.tags.get(TAG_SOURCES, "").split(","))) & run_ids]
