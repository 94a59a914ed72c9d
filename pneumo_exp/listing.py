"""What the store holds, as tables for the console: the searches and cross-validations
(`pneumo-exp runs`), the registered versions (`pneumo-exp models`), and what deleting one
search takes away. MLflow only; no TensorFlow."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp.errors import UserError
from pneumo_exp.tracking import TAG_ARCH, TAG_ROLE, TAG_SEARCH

EXPERIMENT_PREFIX = "pneumo-exp/"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def text_table(heads: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def experiments(client: MlflowClient) -> dict[str, str]:
    """id -> name of the project's experiments."""
    return {e.experiment_id: e.name for e in client.search_experiments(
        filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")}


def parent_runs(client: MlflowClient) -> list[Run]:
    """Searches and cross-validations, newest first."""
    ids = list(experiments(client))
    if not ids:
        return []
    runs = [r for role in ("search", "cv") for r in client.search_runs(
        ids, f"tags.`{TAG_ROLE}` = '{role}'")]  # tags take no IN
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)


def runs_table(client: MlflowClient) -> str:
    rows = []
    for run in parent_runs(client):
        m, t = run.data.metrics, run.data.tags
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        completed = m.get("n_completed_trials")
        trials = (f"{int(completed)}/{int(m['n_trials'])}" if completed is not None
                  and "n_trials" in m else "-")
        rows.append([started, t.get(TAG_ARCH, "?"), t.get(TAG_ROLE), run.info.run_name,
                     run.info.status, trials, m.get("best_val_auc"),
                     t.get("best_trial_id", "-"),
                     f"{m['wall_time_s'] / 60:.1f}" if "wall_time_s" in m else "-",
                     run.info.run_id])
    if not rows:
        return "No search or cross-validation in this store yet: make search ARCH=aug_cnn."
    return text_table(["started", "arch", "kind", "name", "status", "trials", "best val AUC",
                       "best trial", "minutes", "run id"], rows)


def _figure(client: MlflowClient, run_id: str | None, key: str) -> float | None:
    if not run_id:
        return None
    return client.get_run(run_id).data.metrics.get(key)


def models_table(client: MlflowClient, name: str | None = None) -> str:
    filter_string = f"name = '{name}'" if name else ""
    versions = sorted(client.search_model_versions(filter_string),
                      key=lambda v: (v.name, int(v.version)), reverse=True)
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in {v.name for v in versions}:  # search results carry no aliases
        for alias, number in client.get_registered_model(model).aliases.items():
            aliases.setdefault((model, str(number)), []).append(alias)
    rows = []
    for v in versions:
        t = v.tags
        evaluation = t.get("pneumo.evaluation_run_id")
        sources = t.get("pneumo.source_run_ids", "")
        members = int(t.get("pneumo.members", "1") or 1)
        what = (f"{t.get('pneumo.arch', '?')}" + (f" x{members}" if members > 1 else "")
                + (f", site {t['pneumo.site']} (from v{t.get('pneumo.adapted_from_version')})"
                   if "pneumo.site" in t else ""))
        rows.append([v.name, v.version,
                     ",".join(sorted(aliases.get((v.name, str(v.version)), []))) or "-", what,
                     sources[:8] + ("…" if len(sources) > 8 else ""),
                     float(t["pneumo.val_auc"]) if "pneumo.val_auc" in t else None,
                     _figure(client, evaluation, "test_auc"),
                     _figure(client, evaluation, "test_accuracy_at_thr"),
                     _figure(client, evaluation, "test_sensitivity_at_thr"),
                     _figure(client, evaluation, "test_specificity_at_thr"),
                     t.get("pneumo.threshold", "-")[:5]])
    if not rows:
        return "No registered model yet: make search ARCH=aug_cnn, then make promote."
    return text_table(["model", "version", "aliases", "what", "trial run", "val AUC",
                       "test AUC", "test acc", "sens", "spec", "threshold"], rows)


def find_search(client: MlflowClient, search_name: str) -> Run:
    ids = list(experiments(client))
    runs = client.search_runs(ids, f"tags.`{TAG_ROLE}` = 'search' and "
                                   f"tags.`{TAG_SEARCH}` = '{search_name}'") if ids else []
    if not runs:
        raise UserError(f"no search named '{search_name}' in this store; pneumo-exp runs "
                        "lists them.")
    if len(runs) > 1:
        listed = ", ".join(f"{r.info.run_id} ({client.get_experiment(r.info.experiment_id).name})"
                           for r in runs)
        raise UserError(f"{len(runs)} searches are named '{search_name}' ({listed}); "
                        "delete-search needs a single one.")
    return runs[0]


def search_children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id],
                              f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'")


def versions_using(client: MlflowClient, run_ids: set[str]) -> list[Mapping[str, Any]]:
    """Registered versions packaging one of these trial runs."""
    used = []
    for v in client.search_model_versions(""):
        sources = set(filter(None, v.tags.get("pneumo.source_run_ids", "").split(",")))
        if sources & run_ids:
            used.append({"name": v.name, "version": v.version})
    return used
