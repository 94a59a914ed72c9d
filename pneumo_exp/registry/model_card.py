"""A model card per registered version (Mitchell et al. 2019, "Model Cards for Model
Reporting"), written when the version is created: what it is for and not for, its data,
architecture, figures with intervals, threshold rule, calibration, known limitations and
lineage. It is the version's description in the registry (the UI shows it on the version's
page) and `model_card.md` in the run that holds the version's model."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.tracking import MlflowClient

from pneumo_exp.config import PopulationConfig
from pneumo_exp.data.views import ORIGINAL
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.text import describe
from pneumo_exp.tracking.model_uri import PREFIX, registered_version
from pneumo_exp.tracking.names import (
    MODEL_CARD,
    OUT_OF_FOLD,
    SITE_REPORT_HTML,
    TAG_DATA,
    TRAINING_SITE,
)

INTENDED_USE = """\
**Intended use.** Research and teaching on machine learning for chest radiographs, and as a
starting point for models validated at a site: it scores a chest X-ray for signs of
pneumonia, as a probability and a NORMAL / PNEUMONIA label at the threshold below."""

NOT_FOR = """\
**Not for.** Diagnosis or triage of patients without a clinician's reading and a local
validation; patients outside the population below, other modalities or body parts; telling
bacterial from viral pneumonia, or pneumonia from other opacities. It has not been
evaluated prospectively."""


def intended(population: PopulationConfig | None) -> str:
    """What the version is for, whom, what it does with a DICOM image of someone else, and
    what it is not for."""
    whom = "Not stated by its training data."
    if population is not None and population.stated:
        bounds = []
        if population.min_age is not None or population.max_age is not None:
            low = "0" if population.min_age is None else f"{population.min_age:g}"
            high = "any" if population.max_age is None else f"{population.max_age:g}"
            bounds.append(f"ages {low}-{high} (DICOM PatientAge)")
        if population.views:
            bounds.append(f"views {', '.join(population.views)} (ViewPosition)")
        action = ("refused (no probability)" if population.outside == "refuse"
                  else "flagged (a probability, and a note)")
        described = population.description or "as stated below"
        whom = (f"{described[0].upper() + described[1:]}. A DICOM image outside "
                f"{' and '.join(bounds) or 'it'} is {action}; one with no age is flagged "
                "saying so.")
    return f"{INTENDED_USE}\n\n**Intended population.** {whom}\n\n{NOT_FOR}"

LIMITATIONS = """\
**Known limitations.** The training images come from one hospital system. On other
patients (the test split is another block of patients) the ranking holds better than the
operating point: models score the new site's NORMAL images as more pneumonia-like, so the
specificity at the threshold falls. `pneumo-exp adapt` re-estimates the normalization
statistics on a site's unlabeled images (for models with batch normalization); measure
what a site gets with `bench/new_site.py` before use."""

def _views(views: list[str]) -> str:
    if views == [ORIGINAL]:
        return "it is (no test-time views)"
    return f"{len(views)} views ({', '.join(views)})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(f: Mapping[str, Any], key: str) -> str:
    low, high = f.get(f"{key}_ci_low"), f.get(f"{key}_ci_high")
    return f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""


def _figures_table(rows: Sequence[tuple[str, Mapping[str, Any], str]]) -> str:
    lines = ["| split | accuracy | AUC | sensitivity | specificity | ECE |",
             "|---|---|---|---|---|---|"]
    for name, f, p in rows:
        lines.append(f"| {name} | {_pct(f.get(f'{p}accuracy_at_thr'))}"
                     f"{_interval(f, f'{p}accuracy_at_thr')} | "
                     f"{_pct(f.get(f'{p}auc'))}{_interval(f, f'{p}auc')} | "
                     f"{_pct(f.get(f'{p}sensitivity_at_thr'))} | "
                     f"{_pct(f.get(f'{p}specificity_at_thr'))} | {_pct(f.get(f'{p}ece'))} |")
    return "\n".join(lines)


def _counts(p: Mapping[str, str]) -> str:
    """The class counts of the search's train and validation splits, from its params."""
    return ", ".join(f"{split} {p.get(f'data.{split}_NORMAL', '?')} NORMAL / "
                     f"{p.get(f'data.{split}_PNEUMONIA', '?')} PNEUMONIA"
                     for split in ("train", "val"))


def _params(params: Mapping[str, str]) -> str:
    """k=v, sorted, without float noise (contrast=0.3, not 0.30000000000000004)."""
    return describe({k: v for k, v in sorted(params.items()) if not k.startswith("tuner/")},
                    digits=6)


def for_promotion(name: str, version: str, candidates: Sequence[Any],
                  val: Mapping[str, float], test: Mapping[str, float],
                  contract: VersionContract, registry: Any) -> str:
    """The card of a promoted version (one trial, or an ensemble of trials)."""
    search = candidates[0].search
    objective = candidates[0].cfg.search.objective
    p = search.data.params
    members = "\n".join(
        f"- {c.label} (run `{c.trial.info.run_id}`, search `{c.search.info.run_name}`), "
        f"{c.cfg.data.image_size} px, {c.cfg.data.channels} channel(s): "
        f"{_params(c.trial.data.params)}" for c in candidates)
    kind = "one trial" if len(candidates) == 1 else (
        f"an ensemble of {len(candidates)} trials (the mean of their probabilities)")
    return f"""# {name} version {version}

{kind.capitalize()}, promoted by its validation {objective} ({val[objective]:.4f}).

{intended(contract.population)}

**Training data.** {p.get('data.source', '?')} (fingerprint
`{search.data.tags.get(TAG_DATA, '?')}`): {_counts(p)}. Validation is cut from
train by patient; the test split was read once, for the figures below.

**Architecture and hyperparameters.**
{members}

**Figures** (at the decision threshold; 95% bootstrap intervals):

{_figures_table([("validation", val, "val_"), ("test", test, "test_")])}

**Threshold rule.** {contract.threshold:.3f}: the highest specificity whose sensitivity on the
calibrated validation probabilities is at least {registry.min_sensitivity} (a missed
pneumonia is the costly error; validation is cut from the training data, whose labels are
less checked than a reviewed test set's, so a site's sensitivity is usually higher).
Each image is scored as {_views(registry.views)}, the probabilities averaged.

**Calibration.** Temperature {contract.temperature:.3f}, fitted on validation (Guo et al. 2017).
Expected calibration error (15 bins) on validation {_pct(val.get('val_uncalibrated_ece'))}
before, {_pct(val.get('val_ece'))} after; on test {_pct(test.get('test_uncalibrated_ece'))}
before, {_pct(test.get('test_ece'))} after.

{LIMITATIONS}

**Lineage.** Trial runs {', '.join(f'`{c.trial.info.run_id}`' for c in candidates)}; searches
{', '.join(dict.fromkeys(f'`{c.search.info.run_id}`' for c in candidates))}.
"""


def for_site(name: str, version: str, candidates: Sequence[Any], val: Mapping[str, float],
             training: Mapping[str, float], site_fit: Any, choice: Any,
             contract: VersionContract, registry: Any, site: str, base: str) -> str:
    """The card of a site version: searched on a site's labelled images from a base
    version; which trials and why, what it keeps of its base's patients, whom it is for,
    and its threshold from all of the site's labelled images out of fold, with intervals
    (registry/site_version.py, site_folds.py)."""
    search = candidates[0].search
    counts = _counts(search.data.params)
    members = "\n".join(f"- {c.label} (run `{c.trial.info.run_id}`): "
                        f"{_params(c.trial.data.params)}" for c in candidates)
    rows = [("the site's validation", val, "val_")]
    if training:
        rows.append(("the training hospital's validation", training, TRAINING_SITE))
    kept, population = site_fit.kept, contract.population
    if kept is None:
        keeps = ("Not judged: the training hospital's validation images could not be rebuilt "
                 "where it was promoted.")
    elif kept.keeps:
        keeps = f"It {kept.verdict()}."
    elif population is not None and population.leaves_out(site_fit.base.contract.population):
        keeps = (f"It {kept.verdict()}: it is not for them, and its population leaves their "
                 "ages out (above): a DICOM image of one of them is "
                 f"{'refused' if population.outside == 'refuse' else 'flagged'}.")
    else:
        keeps = (f"It {kept.verdict()}: it is not for them, but no age range tells them from "
                 "the site's patients, so an image of one of them gets a probability without a "
                 "flag: do not use it for them.")
    judged = ("\n\nEach of the site's trials weighed, best first on the site's validation, "
              "with its AUC on the training hospital's (`training_site_auc` of its run):\n"
              + "\n".join(f"- {j}" for j in choice.judged) if choice.judged else "")
    folds = site_fit.folds
    found = folds.proportions(folds.scores)
    n_pos, n_neg = found["sensitivity"].total, found["specificity"].total
    return f"""# {name} version {version} (site {site})

A site version of `{base}`, searched on site `{site}`'s own labelled images: {counts}
(validation by patient). Its alias is `site-{site}`; it is no candidate for `champion`.

{intended(contract.population)}

**Trials.** {choice.why[0].upper() + choice.why[1:]}:
{members}{judged}

**Figures** (at the decision threshold {contract.threshold:.3f}; the site's validation with
95% bootstrap intervals):

{_figures_table(rows)}

**Its base's patients.** {keeps}

**Threshold.** {contract.threshold:.3f}, chosen on all {n_pos + n_neg} of the site's labelled
images ({n_pos} PNEUMONIA, {n_neg} NORMAL) out of fold: {folds.folds} folds by patient, the
validation fold scored by the version's members, each other fold by their trials'
configurations retrained on the site's other patients. The highest specificity whose
sensitivity there is at least {registry.min_sensitivity}, after a temperature of
{contract.temperature:.3f} fitted on the same probabilities. There: sensitivity
{found["sensitivity"].text()}, specificity {found["specificity"].text()}, out-of-fold AUC
{folds.figures()[f"{OUT_OF_FOLD}auc"]:.3f}; exact (Clopper-Pearson) 95% intervals, what new
patients of this site should show at this threshold. Each image is scored as
{_views(list(contract.views))}.

**Lineage.** Base version `{base}`; trial runs
{', '.join(f'`{c.trial.info.run_id}`' for c in candidates)}; search `{search.info.run_id}`.
"""


def for_adaptation(source_card: str, name: str, version: str, source_version: str,
                   site: str, images: int, fingerprint: str, layers: int) -> str:
    """The card of a site-adapted version: the source's card under a note on what changed."""
    body = source_card.split("\n", 1)[1] if source_card.startswith("# ") else source_card
    return f"""# {name} version {version} (site {site})

Version {source_version} adapted to site `{site}`: the moving mean and variance of its
{layers} batch-normalization layers re-estimated, in network order, on {images} unlabeled
images of the site (fingerprint `{fingerprint}`); no other weight changed and no label was
read. The threshold and temperature are version {source_version}'s: the site has no labels
to choose them on, and adaptation moves the site's features back to the scale they were
chosen at. The figures below are version {source_version}'s, on its validation and test
splits; measure the site with `bench/new_site.py`.

**Lineage.** Adapted from version {source_version}.
{body}"""


def publish(client: MlflowClient, name: str, version: str, card: str, run_id: str) -> None:
    """The card as the version's description and as model_card.md in its run (the run that
    holds its model); the registered model's description points at the versions."""
    client.update_model_version(name, version, description=card)
    client.log_text(run_id, card, MODEL_CARD)
    client.update_registered_model(name, description=(
        f"Pediatric chest X-ray pneumonia classifier, trained and registered by pneumo-exp.\n\n"
        f"{INTENDED_USE}\n\nEach version carries its model card (data, hyperparameters, "
        "figures, threshold, calibration, limitations, lineage). Aliases: `champion` (best "
        "validation objective), `challenger` (the latest promotion), `site-<name>` (adapted "
        f"to a site). Latest: version {version}."))



SITE_EVALUATIONS = "\n**Site evaluations**"


def add_site_evaluation(client: MlflowClient, model_uri: str, source: str, report: Any,
                        run_id: str) -> None:
    """A line on the version's card for `pneumo-exp evaluate` on a site's labelled cases:
    its data, figures, verdict, and the evaluation run holding the one-page report."""
    if not model_uri.startswith(PREFIX):
        return
    version = registered_version(client, model_uri)
    name, number = version.name, str(version.version)
    card = version.description or f"# {name} version {number}\n"
    if SITE_EVALUATIONS not in card:
        card = card.rstrip() + "\n" + SITE_EVALUATIONS + (
            " (`pneumo-exp evaluate`: each a one-page report, "
            f"`{SITE_REPORT_HTML}`, in its evaluation run)\n")
    line = (f"- {time.strftime('%Y-%m-%d')}, {source}: sensitivity "
            f"{report.sensitivity.text()}, specificity {report.specificity.text()}, AUC "
            f"{report.auc:.3f}; {report.verdict.split(':')[0]} (run `{run_id}`)")
    client.update_model_version(name, number, description=card.rstrip() + "\n" + line + "\n")
