"""Promote the best validation model to the MLflow Model Registry, evaluated once on test:
a list of steps (docs/architecture.md, "A promotion"). Promoting runs that already have a
version does nothing."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion

from pneumo_exp.config import RegistryConfig
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.data.views import ORIGINAL
from pneumo_exp.errors import ConfigError, UserError
from pneumo_exp.evaluation.metrics import binary_metrics, evaluation_figures
from pneumo_exp.evaluation.noise import NOISE, WITHIN, Scored, difference, figure_function
from pneumo_exp.registry import model_card, site_version
from pneumo_exp.registry.aliases import alias_version, move_aliases, promotion_site
from pneumo_exp.registry.packaging import write_version
from pneumo_exp.registry.selection import (
    Candidate,
    best_trial_runs,
    candidate,
    sources_key,
    trial_model,
    trial_run,
    versions_of_runs,
)
from pneumo_exp.registry.site_folds import Calibration
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.features import validation_features
from pneumo_exp.serving.model import Member, member_probability
from pneumo_exp.tracking.figures import log_evaluation
from pneumo_exp.tracking.names import (
    CHAMPION,
    ROLE_EVALUATION,
    TAG_ARCH,
    TAG_BASE_VERSION,
    TAG_DATA,
    TAG_EVALUATION_RUN,
    TAG_HYPERPARAMETERS,
    TAG_MEMBERS,
    TAG_OBJECTIVE,
    TAG_OBJECTIVE_VALUE,
    TAG_SEARCH_RUNS,
    TAG_SITE,
    TAG_SOURCES,
    figure_tag,
    rounded,
)
from pneumo_exp.tracking.runs import start_run
from pneumo_exp.tracking.store import connect

VERSION_FIGURES = ("val_auc", "val_accuracy", "val_loss", "val_sensitivity_at_thr",
                   "val_specificity_at_thr", "val_ece", "val_uncalibrated_ece")  # as tags


@dataclass(frozen=True)
class Promotion:
    version: ModelVersion
    created: bool
    champion: str  # version number holding the champion alias afterwards
    figures: dict[str, float]  # on test; a site version's: on both sites' validation
    why: str = ""  # why these members: the ensemble against its best member
    site: str | None = None  # the site it is for (None: the training site)


def promote(registry: RegistryConfig, arch: str | None = None, run_id: str | None = None,
            top: int | None = None, any_trial: bool = False,
            search: str | None = None, site: str | None = None) -> Promotion:
    """Register the ensemble of the up to `top` (registry.top) best candidate trials
    validated alike (`any_trial`: of every finished trial; `search`: of that search only;
    `site`: of that site's searches), or the one trial `run_id`; the best member alone when
    the ensemble validates worse than it beyond the noise. A site's trials make a site
    version (site_version.py); the aliases follow registry/aliases.py, last."""
    client = connect()
    top = registry.top if top is None else top
    if top < 1:
        raise ConfigError(f"TOP must be an integer >= 1; got {top}.")
    trials = ([trial_run(client, run_id)] if run_id else best_trial_runs(  # a site's: all
        client, arch, None if site is not None else top, any_trial, search, site))
    site = promotion_site(trials[:top], site)
    choice = (site_version.choose(client, trials, top, registry)
              if site is not None and run_id is None else None)
    trials = choice.trials if choice else trials
    name = registry.model_name
    existing = versions_of_runs(client, name, [t.info.run_id for t in trials], site)
    if existing:
        return Promotion(existing[0], False, alias_version(client, name, CHAMPION) or "-", {},
                         site=site)
    candidates = [candidate(client, t) for t in trials]
    if site is None:
        need_test_split(candidates)
    members = [Member(trial_model(c.trial), c.cfg.data.image_size, c.cfg.data.channels)
               for c in candidates]
    sets = validation_sets(candidates)
    alone = member_scores(members, sets, registry.views)  # validation, scored once
    keep, why = ensemble_or_best(candidates, alone)
    if len(keep) < len(candidates):
        candidates, members, sets, alone = ([x[i] for i in keep]
                                            for x in (candidates, members, sets, alone))
        existing = versions_of_runs(client, name, [c.trial.info.run_id for c in candidates],
                                    site)
        if existing:
            return Promotion(existing[0], False,
                             alias_version(client, name, CHAMPION) or "-", {}, why, site)
    val = mean_score(alone)
    fitted = None if site is None else site_version.fit(  # both hospitals', out of fold
        client, candidates, members, val, registry, choice.base if choice else None)
    calibration = fitted.folds if fitted else Calibration.fit(val, registry.min_sensitivity)
    val_figures = validation_figures(val, calibration, registry.bootstrap,
                                     candidates[0].cfg.search.sensitivity_target)
    tests = test_sets(candidates)
    test = mean_score(member_scores(members, tests, registry.views)) if tests else None
    scores = calibration.apply(val)
    features, features_adapted = validation_features(
        [m.model for m in members], [st.images for st in sets], val.labels, sets[0].groups,
        scores)
    contract = VersionContract(
        members=tuple(m.preprocessing for m in members), threshold=calibration.threshold,
        temperature=calibration.temperature, views=tuple(registry.views),
        min_sensitivity=registry.min_sensitivity,
        validated={k: (p.hits, p.total) for k, p in  # what a site's report is judged against
                   calibration.proportions(fitted.folds.scores if fitted else val).items()},
        reference=score_summary(scores, calibration.threshold), features=features,
        features_adapted=features_adapted,
        population=fitted.population if fitted else candidates[0].cfg.population)
    version, evaluation_run, figures = evaluate_and_register(
        name, candidates, members, contract, val_figures, test, registry)
    number = str(version.version)
    tested = bool(figures)
    if fitted is not None:  # a site version: figures on both sites, and its card
        figures = site_version.publish(
            client, name, number, candidates, contract, val_figures, fitted,
            choice or site_version.Choice(trials, "the trial asked for (--run)", []),
            evaluation_run, registry)
    else:
        card = model_card.for_promotion(name, number, candidates, val_figures, figures,
                                        contract, registry)
        model_card.publish(client, name, number, card, evaluation_run)
    champion = move_aliases(client, name, number, candidates[0].cfg.search.direction, tested)
    return Promotion(client.get_model_version(name, number), True, champion, figures, why,
                     site)


def ensemble_or_best(candidates: Sequence[Candidate], alone: Sequence[Scored]
                     ) -> tuple[list[int], str]:
    """Which members to package, given each one's validation scores (`alone`), and why: all
    of them, unless their mean validates worse than the best of them alone (by the search's
    objective) beyond the validation noise (a paired bootstrap), then that best member
    alone (why: docs/searching.md, "Registry and reuse")."""
    if len(alone) == 1:
        return [0], ""
    s = candidates[0].cfg.search
    figure = figure_function(s.objective, s.sensitivity_target)
    values = [figure(a.labels, a.prob) for a in alone]
    best = int(np.argmax(values) if s.direction == "max" else np.argmin(values))
    d = difference(s.objective, mean_score(alone), alone[best], paired=True,
                   sensitivity_target=s.sensitivity_target)
    worse = d.high < 0 if s.direction == "max" else d.low > 0
    what = (f"the ensemble of {len(alone)} validates at {s.objective} {d.a:.4f} against its "
            f"best member's {d.b:.4f} ({candidates[best].label}; difference {d.value:+.4f}, "
            f"95% interval [{d.low:+.4f}, {d.high:+.4f}])")
    if worse:
        return [best], f"{what}: worse beyond {NOISE}, so that member alone"
    return list(range(len(alone))), f"{what}: {WITHIN} or better"


def validation_sets(candidates: Sequence[Candidate]) -> list[LabeledImages]:
    """Each member's validation images at its own preprocessing; one set of patients."""
    sets = []
    for c in candidates:
        data = load_training_data(c.cfg.data, c.cfg.search.seed)
        if c.search.data.tags.get(TAG_DATA) not in (data.fingerprint,
                                                    data.file_stats_fingerprint):
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


def need_test_split(candidates: Sequence[Candidate]) -> None:
    """Refuse, before anything is loaded, a version of the training site that could not
    be evaluated once on test: only a tested one may become challenger or champion."""
    for c in candidates:
        source = c.search.data.params["data.source"]
        if not open_source(source).has_split("test"):
            raise UserError(f"the data of {c.label}'s search ({source}) has no test split, "
                            "and a version of the training site is evaluated once on test "
                            "before it may become challenger or champion. Search a dataset "
                            "with test/ (NORMAL/ and PNEUMONIA/), or a site's folder with "
                            "ARCH=site SITE=<name>.")


def test_sets(candidates: Sequence[Candidate]) -> list[LabeledImages] | None:
    """Each member's test images (of the dataset its search used) at its preprocessing;
    None when that dataset has no test split (a site's labelled folder)."""
    sources = [open_source(c.search.data.params["data.source"]) for c in candidates]
    if not all(source.has_split("test") for source in sources):
        return None
    return [load_split(source, "test", c.cfg.data.image_size, c.cfg.data.channels).data
            for source, c in zip(sources, candidates, strict=True)]


def member_scores(members: Sequence[Member], sets: Sequence[LabeledImages],
                  views: Sequence[str] = (ORIGINAL,)) -> list[Scored]:
    """Each member's probability over the views before calibration, each on its own set
    (the same images)."""
    arrays = {m.preprocessing: s.images for m, s in zip(members, sets, strict=True)}
    return [Scored(sets[0].labels, member_probability(m, arrays, 256, views))
            for m in members]


def mean_score(scores: Sequence[Scored]) -> Scored:
    """The members' mean probability: the ensemble's, before calibration."""
    return Scored(scores[0].labels, np.mean([s.prob for s in scores], axis=0))


def validation_figures(val: Scored, calibration: Calibration, n_bootstrap: int,
                       sensitivity_target: float = 0.95) -> dict[str, float]:
    """The calibrated validation figures at 0.5 and at the threshold (sensitivity,
    specificity and accuracy), with intervals, and the calibration error and loss before
    calibration too."""
    at_thr = {f"val_{k}_at_thr" for k in ("sensitivity", "specificity", "accuracy")}
    figures = {k: v for k, v in evaluation_figures(
        val.labels, calibration.apply(val), calibration.threshold, "val", n_bootstrap, val.prob,
        sensitivity_target).items() if k in at_thr or not k.endswith(("_at_thr", "_threshold"))}
    figures["val_uncalibrated_loss"] = binary_metrics(val.labels, val.prob)["loss"]
    return figures


def evaluate_and_register(name: str, candidates: Sequence[Candidate], members: Sequence[Member],
                          contract: VersionContract, val_figures: Mapping[str, float],
                          test: Scored | None, registry: RegistryConfig
                          ) -> tuple[ModelVersion, str, dict[str, float]]:
    """The evaluation run: the test figures (the only read of the test split; none without
    one), and the version written into it with its lineage. Returns the version, the run's
    id and the test figures."""
    first = candidates[0]
    title = (first.label if len(candidates) == 1 else f"ensemble of {len(candidates)}: "
             + ", ".join(c.label for c in candidates))
    calibration = Calibration(contract.temperature, contract.threshold)
    tags = lineage(candidates, val_figures)
    with start_run(first.trial.info.experiment_id,
                   "evaluation-" + title.replace(" ", "-").replace(",", ""), ROLE_EVALUATION,
                   tags[TAG_DATA], {k: tags[k] for k in (TAG_ARCH, TAG_SOURCES)}) as run:
        # (the packaged model logs its config, members, threshold and temperature, as params)
        mlflow.log_params({"source_run_ids": ",".join(c.trial.info.run_id for c in candidates),
                           "threshold_rule": f"max specificity with calibrated val "
                                             f"sensitivity >= {registry.min_sensitivity}",
                           "test_size": len(test.labels) if test else 0})
        mlflow.log_metrics(rounded(val_figures))
        figures = {} if test is None else log_evaluation(
            test.labels, calibration.apply(test), calibration.threshold, "test",
            registry.bootstrap, title=f"{title}, test split", uncalibrated=test.prob)
        version = write_version(name, contract, [m.model for m in members],
                                {**tags, TAG_EVALUATION_RUN: run.info.run_id})
    return version, run.info.run_id, figures


def score_summary(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """What validation's calibrated scores looked like: how many, the share called
    PNEUMONIA at the threshold, the quantiles every 5% (the site check's page)."""
    return {"images": len(scores), "positive_share": float(np.mean(scores >= threshold)),
            "score_quantiles": [float(q) for q in np.quantile(scores, np.linspace(0, 1, 21))]}


def lineage(candidates: Sequence[Candidate], val_figures: Mapping[str, float]
            ) -> dict[str, str]:
    """Where a promoted version comes from, and its validation figures, as tags."""
    first = candidates[0]
    objective = first.cfg.search.objective
    hyperparameters = ([c.trial.data.params for c in candidates] if len(candidates) > 1
                       else first.trial.data.params)
    search_tags = first.search.data.tags
    return {
        **{k: search_tags[k] for k in (TAG_SITE, TAG_BASE_VERSION) if k in search_tags},
        TAG_SOURCES: sources_key([c.trial.info.run_id for c in candidates]),
        TAG_MEMBERS: str(len(candidates)),
        TAG_SEARCH_RUNS: ",".join(dict.fromkeys(c.search.info.run_id for c in candidates)),
        TAG_ARCH: ",".join(dict.fromkeys(c.trial.data.tags.get(TAG_ARCH, c.cfg.arch)
                                         for c in candidates)),
        TAG_DATA: first.search.data.tags.get(TAG_DATA, ""),
        TAG_OBJECTIVE: objective, TAG_OBJECTIVE_VALUE: str(val_figures[objective]),
        TAG_HYPERPARAMETERS: json.dumps(hyperparameters, sort_keys=True)[:5000],
        **{figure_tag(k): f"{val_figures[k]:.4f}" for k in VERSION_FIGURES},
    }
