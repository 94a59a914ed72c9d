"""Which trial runs a promotion packages: the best by the validation objective, then the
next best validated on the same images, and the configuration of each one's search."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp.config import ExperimentConfig, architectures, load_config
from pneumo_exp.errors import ConfigError, UserError
from pneumo_exp.registry.aliases import run_site
from pneumo_exp.search.callbacks import promotable
from pneumo_exp.tracking.names import (
    ROLE_TRIAL,
    SCREEN,
    TAG_ADAPTED_FROM_VERSION,
    TAG_ARCH,
    TAG_CANDIDATE,
    TAG_FIDELITY,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SITE,
    TAG_SOURCES,
    TAG_STATUS,
    TAG_TRIAL,
    VALIDATION_PARAMS,
)
from pneumo_exp.tracking.queries import every, quoted
from pneumo_exp.tracking.runs import parent_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A trial run to package, with its search's configuration and parent run."""

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


def is_candidate(run: Run) -> bool:
    """A full-fidelity trial that ran its course (search.callbacks.promotable): not one
    screened at low fidelity, stopped by a rule, or cut by the time budget. (A trial logged
    before the candidate tag existed: by how it ended.)"""
    tag = run.data.tags.get(TAG_CANDIDATE)
    return tag == "true" if tag is not None else promotable(run.data.tags.get(TAG_STATUS, ""))


def best_trial_runs(client: MlflowClient, arch: str | None, top: int | None = 1,
                    any_trial: bool = False, search: str | None = None,
                    site: str | None = None) -> list[Run]:
    """The best candidate trial run by `best_<objective>`, then the next best validated on
    the same images, up to `top` (None: every one, best first); of one `search`, of a
    `site`'s searches or else the training site's only (registry/aliases.py). `any_trial`:
    every finished full-fidelity trial is a candidate (docs/searching.md, "Registry and
    reuse")."""
    objective, direction, names = objective_of(arch)
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n))]
    order = "DESC" if direction == "max" else "ASC"
    of_search = f" and tags.`{TAG_SEARCH}` = {quoted(search)}" if search else ""
    of_search += f" and tags.`{TAG_SITE}` = {quoted(site)}" if site else ""
    runs = every(
        client.search_runs, ids,
        f"tags.`{TAG_ROLE}` = {quoted(ROLE_TRIAL)} and attributes.status = 'FINISHED' and "
        f"metrics.best_{objective} > -1e300{of_search}",
        order_by=[f"metrics.best_{objective} {order}"]) if ids else []
    what = f"of {arch} " if arch else ""
    what += f"in search '{search}' " if search else ""
    what += f"of site '{site}' " if site else ""
    if not runs:
        raise UserError(f"no finished trial {what}to promote: run `make search"
                        f"{' ARCH=' + arch if arch else ''}` first.")
    sites = sorted({s for r in runs if (s := run_site(r))})
    runs = [r for r in runs if run_site(r) == site]  # a site's validation is its own
    if not runs:
        raise UserError(f"the finished trials{' in search ' + repr(search) if search else ''}"
                        f" are site {', '.join(sites)}'s, and a site's trials become its own "
                        "version (alias site-<name>), one site at a time: give SITE=<name>. "
                        "`champion` and `challenger` are the training site's.")
    left_out = [r for r in runs if r.data.tags.get(TAG_FIDELITY) == SCREEN
                or not (any_trial or is_candidate(r))]
    runs = [r for r in runs if r not in left_out]
    if not runs:
        raise UserError(f"no trial {what}ran its course at full fidelity: the {len(left_out)} "
                        "finished were screened, stopped by a rule or cut by the time budget. "
                        "Finish the search (the same command resumes it), or promote a "
                        "stopped or cut one with --any-trial.")

    @functools.cache
    def validation(parent: str) -> tuple[str | None, ...]:
        params = client.get_run(parent).data.params
        return tuple(params.get(k) for k in VALIDATION_PARAMS)

    # stops at `top`: each new search met costs a read of its parent run
    best = validation(runs[0].data.tags[MLFLOW_PARENT_RUN_ID])
    same = list(itertools.islice((r for r in runs if validation(
        r.data.tags[MLFLOW_PARENT_RUN_ID]) == best), top))
    if top is not None and len(same) < top:
        log.info("Promoting the %d finished trial(s) validated like the best one (TOP=%d "
                 "asks for up to %d).", len(same), top, top)
    return same


def trial_run(client: MlflowClient, run_id: str) -> Run:
    """The trial run `run_id`, checked to be a finished trial."""
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise UserError(f"no run {run_id} in the store {mlflow.get_tracking_uri()}.") from e
    if run.data.tags.get(TAG_ROLE) != ROLE_TRIAL or run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is not a finished trial of a search; promote takes "
                        "the id of a 'trial-N' run.")
    return run


def candidate(client: MlflowClient, trial: Run) -> Candidate:
    """A trial with the configuration of its search."""
    parent = client.get_run(trial.data.tags[MLFLOW_PARENT_RUN_ID])
    return Candidate(trial, parent_config(parent), parent)


def trial_model(trial: Run) -> object:
    """The Keras model a trial run logged (its best checkpoint)."""
    models = mlflow.search_logged_models(
        experiment_ids=[trial.info.experiment_id],
        filter_string=f"source_run_id = {quoted(trial.info.run_id)}", output_format="list")
    if not models:
        raise UserError(f"trial run {trial.info.run_id} has no logged model to promote.")
    return mlflow.keras.load_model(models[0].model_uri)


def sources_key(run_ids: Sequence[str]) -> str:
    """The value of a version's TAG_SOURCES: its trial runs, sorted."""
    return ",".join(sorted(run_ids))


def versions_of_runs(client: MlflowClient, name: str, run_ids: Sequence[str],
                     site: str | None = None) -> list[ModelVersion]:
    """The versions packaging exactly these trial runs, for `site` (None: the training
    site's); not the adaptations of one, which carry its sources too. Each read again by
    its number, as a search of versions returns them without their aliases."""
    key = sources_key(run_ids)
    return [client.get_model_version(name, v.version)
            for v in every(client.search_model_versions, f"name = {quoted(name)}")
            if v.tags.get(TAG_SOURCES) == key and v.tags.get(TAG_SITE) == site
            and TAG_ADAPTED_FROM_VERSION not in v.tags]
