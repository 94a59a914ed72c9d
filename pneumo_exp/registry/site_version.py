"""A site version's promotion (`make promote ARCH=site SITE=north`): which of the site's
trials it packages, weighing both hospitals' validation, what it keeps of its base's
patients, whom it is for, and its card (the rule and why: docs/sites.md, "4. A site
version of its own"). Its threshold: site_folds.py; its alias, `site-<name>` only: aliases.py."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pneumo_exp.config import PopulationConfig, RegistryConfig, load_config
from pneumo_exp.data.dataset import TrainingData, load_training_data
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation.noise import Difference, Scored, difference
from pneumo_exp.evaluation.report import SiteReport, site_report
from pneumo_exp.registry import model_card
from pneumo_exp.registry.selection import Candidate, candidate, trial_model
from pneumo_exp.registry.site_folds import Calibration, OutOfFold, out_of_fold
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.model import Member, classifier, ensemble_probability
from pneumo_exp.serving.predict import load
from pneumo_exp.tracking.model_uri import PREFIX, registered_version, version_uri
from pneumo_exp.tracking.names import (
    TAG_BASE_VERSION,
    TAG_SITE,
    TAG_SOURCES,
    TRAINING_SITE,
)
from pneumo_exp.tracking.runs import log_metrics

log = logging.getLogger(__name__)
# The AUC on its base's validation a site version may lose beyond the noise and still be for
# its base's patients: about the noise itself there (docs/sites.md)
KEEP_MARGIN = 0.01


class Base:
    """The base version of a site's search: its members and population, and its training
    data when it can be rebuilt (its train split to mix in, its validation to judge what a
    site version keeps), with its own probabilities on that validation."""

    def __init__(self, client: MlflowClient, version: ModelVersion) -> None:
        self.name = f"{version.name}/{version.version}"
        loaded = classifier(load(version_uri(version)))
        sizes = {m.preprocessing for m in loaded.members}
        if len(sizes) != 1:
            raise UserError(f"{PREFIX}{self.name} has members of different preprocessing "
                            f"({sorted(sizes)}): a site search needs one; promote its members "
                            "separately.")
        (self.preprocessing,) = sizes
        self.members = loaded.members
        self.contract: VersionContract = loaded.contract
        self.validated = loaded.contract.validated_figures(version.tags)
        self.data = _training_data(client, version, self.preprocessing)

    @functools.cached_property
    def prob(self) -> np.ndarray | None:
        """The base version's probabilities on its validation images, over its views."""
        if self.data is None:
            return None
        return ensemble_probability(self.members, {self.preprocessing: self.data.val.images},
                                    views=self.contract.views)

    def context(self, batch_size: int) -> dict[str, Any]:
        """What the site hypermodel (hypermodels/site.py) takes from its base."""
        return {"base_models": [m.model for m in self.members], "batch_size": batch_size,
                "scratch_point": scratch_point(),
                "training_site": (self.data.train.images, self.data.train.labels)
                if self.data is not None else None}


def _training_data(client: MlflowClient, version: ModelVersion, preprocessing: tuple[int, int]
                   ) -> TrainingData | None:
    """The base's train and validation splits (its first member's search's), at the site's
    preprocessing; None when they cannot be had (another machine, the data moved)."""
    sources = version.tags.get(TAG_SOURCES, "")
    if not sources:
        log.warning("%s names no trial runs: a site search mixes none of its training images "
                    "in, and its promotion cannot judge what it keeps of them.",
                    version_uri(version))
        return None
    try:
        first = candidate(client, client.get_run(sources.split(",")[0]))
        size, channels = preprocessing
        data = dataclasses.replace(first.cfg.data, image_size=size, channels=channels)
        return load_training_data(data, first.cfg.search.seed)
    except (mlflow.exceptions.MlflowException, KeyError, ValueError, DataError, UserError,
            OSError) as e:
        log.warning("the training hospital's images of %s cannot be read (%s): a site search "
                    "mixes none in, and its promotion cannot judge what it keeps of them.",
                    version_uri(version), str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def base_of(client: MlflowClient, trial: Run) -> Base:
    """The base version a site's trial started from."""
    return Base(client, registered_version(client, PREFIX + trial.data.tags[TAG_BASE_VERSION]))


def scratch_point() -> dict[str, Any]:
    """The default family's network (experiments/aug_cnn.yaml): its fixed space and its
    given point, every value one."""
    aug_cnn = load_config("aug_cnn")
    fixed = {k: v for k, v in aug_cnn.space.items() if not isinstance(v, list | dict)}
    return {**fixed, **(aug_cnn.search.initial_points[0] if aug_cnn.search.initial_points
                        else {})}


@dataclass(frozen=True)
class Kept:
    """A model's AUC on its base's validation images against the base version's, paired
    (`difference`: a the model's, b the base's), its probabilities there, and, at its own
    temperature and threshold, its sensitivity and specificity there against what the base
    validated (`operating`, as `evaluate` judges a site: evaluation/report.py)."""

    difference: Difference
    prob: np.ndarray
    operating: SiteReport | None = None

    @property
    def ranks(self) -> bool:
        """Not below the base's AUC by more than KEEP_MARGIN beyond the noise."""
        return self.difference.high >= -KEEP_MARGIN

    @property
    def keeps(self) -> bool:
        """It ranks its base's patients as the base did, and its threshold holds for them
        what the base validated."""
        return self.ranks and not (self.operating and self.operating.shortfalls())

    def describe(self) -> str:
        d = self.difference
        return (f"AUC {d.a:.3f} on the training hospital's validation, against its base's "
                f"{d.b:.3f} (difference {d.value:+.3f}, 95% interval [{d.low:+.3f}, "
                f"{d.high:+.3f}])")

    def figures(self) -> dict[str, float]:
        """Its figures on its base's validation, at its own threshold and temperature."""
        o = self.operating
        if o is None:
            return {}
        d = self.difference
        return {f"{TRAINING_SITE}auc": d.a, f"{TRAINING_SITE}base_auc": d.b,
                f"{TRAINING_SITE}sensitivity_at_thr": o.sensitivity.value,
                f"{TRAINING_SITE}specificity_at_thr": o.specificity.value,
                f"{TRAINING_SITE}accuracy_at_thr": (o.sensitivity.hits + o.specificity.hits) / (
                    o.sensitivity.total + o.specificity.total)}

    def verdict(self) -> str:
        """Whether it keeps its base's patients, and why, in words."""
        why = [f"{self.describe()}, {'not ' if self.ranks else ''}below the base's by more "
               f"than {KEEP_MARGIN} beyond the noise"]
        if (o := self.operating) is not None:
            short = o.shortfalls()
            why.append(f"at its threshold {'; '.join(short)}" if short else
                       f"at its threshold sensitivity {o.sensitivity.text()} and specificity "
                       f"{o.specificity.text()}, as its base validated")
        return f"{'keeps' if self.keeps else 'lost'} its base's patients: {'; '.join(why)}"


def kept(base: Base, members: Sequence[Member], views: Sequence[str],
         calibration: Calibration | None = None) -> Kept | None:
    """What `members` keep of `base`'s patients, at `calibration` if given; None when its
    validation cannot be had."""
    if base.data is None or base.prob is None:
        return None
    labels = base.data.val.labels
    prob = ensemble_probability(members, {base.preprocessing: base.data.val.images},
                                views=views)
    operating = None if calibration is None else site_report(
        labels, calibration.apply(Scored(labels, prob)), calibration.threshold,
        base.contract.min_sensitivity or 0.0, base.validated)
    return Kept(difference("val_auc", Scored(labels, prob), Scored(labels, base.prob),
                           paired=True), prob, operating)


@dataclass(frozen=True)
class Choice:
    trials: list[Run]
    why: str  # which trials, and why: for the card and the console
    judged: list[str]  # each trial scored on the training hospital's validation
    base: Base | None = None


def choose(client: MlflowClient, ranked: Sequence[Run], top: int,
           registry: RegistryConfig) -> Choice:
    """The up to `top` trials a site version packages, of `ranked` (a site's candidate
    trials validated alike, best first by its objective), by docs/sites.md's rule; each
    trial's model is loaded and scored in turn."""
    first = candidate(client, ranked[0])
    base = base_of(client, ranked[0])
    ranked = [r for r in ranked if r.data.tags.get(TAG_BASE_VERSION) == base.name]
    if base.data is None:
        return Choice(list(ranked[:top]), "the site's best trials by its validation alone "
                      "(the training hospital's validation cannot be rebuilt here)", [], base)
    s = first.cfg.search
    val = load_training_data(first.cfg.data, s.seed).val
    site: list[Scored] = []
    kept_by: list[Kept] = []
    judged, near = [], []
    for i, run in enumerate(ranked):
        member = Member(trial_model(run), *base.preprocessing)
        site.append(Scored(val.labels, ensemble_probability(
            [member], {base.preprocessing: val.images}, views=registry.views)))
        k = kept(base, [member], registry.views)
        assert k is not None
        kept_by.append(k)
        log_metrics(client, run.info.run_id, {f"{TRAINING_SITE}auc": k.difference.a})
        d = difference(s.objective, site[i], site[0], paired=True,
                       sensitivity_target=s.sensitivity_target)
        within = i == 0 or ((d.high >= 0) if s.direction == "max" else (d.low <= 0))
        if within:
            near.append(i)
        on_site = ("the site's best" if i == 0 else
                   f"{d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}] from it, "
                   f"{'within' if within else 'beyond'} the noise")
        judged.append(f"{candidate(client, run).label} (run `{run.info.run_id}`): the site's "
                      f"{s.objective} {d.a:.4f} ({on_site}); {k.describe()}")
    chosen = sorted(near, key=lambda i: -kept_by[i].difference.a)[:top]
    why = (f"of the {len(near)} trial(s) the site's validation cannot tell from its best "
           f"({s.objective}, a paired bootstrap), the {len(chosen)} that keep the most of "
           "their base (AUC on the training hospital's validation)")
    log.info("Site trials, on the site's validation and the training hospital's:\n  %s\n"
             "Chosen: %s: %s.", "\n  ".join(judged), why,
             ", ".join(candidate(client, ranked[i]).label for i in chosen))
    return Choice([ranked[i] for i in chosen], why, judged, base)


def population_without(site: PopulationConfig, base: PopulationConfig | None,
                       why: str) -> PopulationConfig:
    """The site's population with its base's patients' ages left out (the site's ages above
    the base's, else below them), and `why` in its description; as it is when the two do
    not overlap, or when no age bound can leave the base's out (it says so)."""
    if base is None or (base.min_age is None and base.max_age is None):
        return site
    low, high = site.min_age, site.max_age
    overlap = ((low is None or base.max_age is None or low <= base.max_age)
               and (high is None or base.min_age is None or high >= base.min_age))
    if not overlap:
        return site
    described = site.description or "the site's patients"
    if base.max_age is not None and (high is None or high > base.max_age):
        low = math.floor(base.max_age) + 1  # completed years: the day the base's end
    elif base.min_age is not None and float(base.min_age).is_integer() and (
            low is None or low < base.min_age):
        high = base.min_age - 1
    else:
        return dataclasses.replace(site, description=(
            f"{described}; it {why}, and no age range of the site's leaves them out"))
    return dataclasses.replace(site, min_age=low, max_age=high, description=(
        f"{described}, not its base's patients ({base.description or 'its training data'}): "
        f"it {why}"))


@dataclass(frozen=True)
class SiteFit:
    """What a site version's contract and card take from both hospitals."""

    kept: Kept | None  # None: its base's validation cannot be rebuilt
    folds: OutOfFold  # its temperature and threshold, out of fold
    population: PopulationConfig
    base: Base


def fit(client: MlflowClient, candidates: Sequence[Candidate], members: Sequence[Member],
        val: Scored, registry: RegistryConfig, base: Base | None = None) -> SiteFit:
    """The packaged members judged on their base's validation, their population, and their
    temperature and threshold from all of the site's labelled images out of fold."""
    base = base or base_of(client, candidates[0].trial)
    folds = out_of_fold(candidates, members, val,
                        base.context(candidates[0].cfg.train.batch_size), registry)
    k = kept(base, members, registry.views, folds)
    population = candidates[0].cfg.population
    if k is not None and not k.keeps:
        population = population_without(population, base.contract.population, k.verdict())
    return SiteFit(k, folds, population, base)


def publish(client: MlflowClient, name: str, number: str, candidates: Sequence[Candidate],
            contract: VersionContract, val_figures: Mapping[str, float], site_fit: SiteFit,
            choice: Choice, evaluation_run: str, registry: Any) -> dict[str, float]:
    """The card and the training hospital's and out-of-fold figures (logged to the
    evaluation run too) of a new site version; its figures. (Its alias moves after.)"""
    tags = candidates[0].search.data.tags
    training = site_fit.kept.figures() if site_fit.kept else {}
    folds = site_fit.folds.figures()
    log_metrics(client, evaluation_run, {**training, **folds})
    card = model_card.for_site(name, number, candidates, val_figures, training, site_fit,
                               choice, contract, registry, tags[TAG_SITE],
                               tags[TAG_BASE_VERSION])
    model_card.publish(client, name, number, card, evaluation_run)
    return {**{k: v for k, v in val_figures.items() if k.endswith("_at_thr") or k == "val_auc"},
            **training, **folds}
