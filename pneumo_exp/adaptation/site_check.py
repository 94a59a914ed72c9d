"""`pneumo-exp site-check`: "will it work on our patients?", before anything is labelled:
the site's images against validation's features (serving/features.py), by two-sample tests
(evaluation/two_sample.py). The tests, verdicts and thresholds: docs/sites.md, section 1."""

from __future__ import annotations

import base64
import html
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from scipy.stats import ks_2samp

from pneumo_exp.data.dicom import patient_key
from pneumo_exp.data.images import Decoded, decode_many, files_fingerprint
from pneumo_exp.data.site_folder import LABELS_CSV, csv_patients
from pneumo_exp.data.split import patient_id
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.evaluation.report import Validated, html_page, png_bytes
from pneumo_exp.evaluation.two_sample import MMD, classifier_auc, mmd_test
from pneumo_exp.serving.batch_norm import MIN_ADAPTATION_IMAGES, adapted, can_adapt
from pneumo_exp.serving.features import FeatureReference
from pneumo_exp.serving.model import PneumoniaClassifier, classifier
from pneumo_exp.serving.predict import evaluation_run, keep_page, load
from pneumo_exp.tracking.names import (
    SITE_CHECK_HTML,
    SITE_CHECK_PNG,
    rounded,
)

LIKE, SHIFTED, ANOTHER = "like the training site", "shifted", "another population"
VERDICTS = (LIKE, SHIFTED, ANOTHER)
# From the calibration by prevalence (docs/results.md, "The site check by prevalence"): the
# training hospital's unseen images stay below ANOTHER_POPULATION_AUC, another hospital's
# adults reach it; held-out validation stays below SHIFTED_AUC.
ANOTHER_POPULATION_AUC = 0.97
SHIFTED_AUC = 0.85
SHIFT_P_VALUE = 0.05  # the MMD test finds a shift below this p-value
MIN_SITE_IMAGES = MIN_ADAPTATION_IMAGES  # adaptation's whole batch: the fewest it reads
MIN_SITE_PATIENTS = 8  # fewer reach SHIFTED_AUC by chance too often (docs/sites.md, 1.)


@dataclass(frozen=True)
class Look:
    """A site's images as one network sees them, against validation as it sees it."""

    distance: np.ndarray  # each image's feature distance from validation's (features.py)
    limit: float  # beyond it: all but 1% of held-out validation lie within
    auc: float  # the classifier two-sample test
    mmd: MMD
    projected: np.ndarray  # the site's projected features, for the page
    reference: np.ndarray  # validation's reference part, projected alike

    @property
    def flagged_share(self) -> float:
        return float(np.mean(self.distance > self.limit))


def estimated_prevalence(called: float, validated: Validated) -> float | None:
    """The site's share of PNEUMONIA from the share of its images called PNEUMONIA and the
    validated figures at the threshold, by black-box shift estimation (Lipton et al. 2018;
    docs/sites.md, section 1). None without those figures, or when they tell the classes
    apart no better than chance."""
    sensitivity, specificity = (Validated.value(validated.sensitivity),
                                Validated.value(validated.specificity))
    if (sensitivity is None or specificity is None or not np.isfinite(sensitivity)
            or not np.isfinite(specificity) or sensitivity + specificity <= 1.0):
        return None
    return float(np.clip((called - 1.0 + specificity) / (sensitivity + specificity - 1.0),
                         0.0, 1.0))


@dataclass(frozen=True)
class SiteCheck:
    images: int
    skipped: int
    prob: np.ndarray  # calibrated probabilities of PNEUMONIA, as registered
    threshold: float
    validation: dict[str, Any]  # what validation's scores looked like (contract.reference)
    validation_scores: np.ndarray
    source: Look
    adapted: Look | None  # None when the version has nothing to adapt
    patients: int = 0
    prevalence: float | None = None  # the site's estimated share of PNEUMONIA
    drawn: bool = False  # validation's reference drawn to it (False: at its own)
    chance: str = ""  # "sensitivity x, specificity y" when they sum to 1 or less

    @property
    def positive_share(self) -> float:
        return float(np.mean(self.prob >= self.threshold))

    @property
    def compared_with(self) -> str:
        """Which validation the site is compared with, in words."""
        if self.drawn:
            return f"validation's drawn to their estimated {self.prevalence:.0%} PNEUMONIA"
        if self.chance:  # a version, however new, whose threshold told nothing apart
            why = (f"its validated sensitivity and specificity at its threshold ({self.chance}) "
                   "tell the classes apart no better than chance, so its calls estimate no "
                   "prevalence")
            return (f"validation's at its own prevalence ({why}; a prevalence unlike "
                    "validation's reads as a shift)")
        why = ("it keeps no validated counts to estimate theirs" if self.prevalence is None
               else f"theirs is estimated at {self.prevalence:.0%}, but it keeps no classes of "
               "its validation images to draw them to it")
        return (f"validation's at its own prevalence (this version is older: {why}; a "
                "prevalence unlike validation's reads as a shift: promote it again to "
                "separate them)")

    @property
    def looks(self) -> dict[str, Look]:
        """The comparisons made, by name: as registered, and adapted to the site if it was."""
        return {"as registered": self.source, **({"adapted to it": self.adapted}
                                                  if self.adapted is not None else {})}

    @property
    def ks(self) -> float:
        """The scores' Kolmogorov-Smirnov distance from validation's (a description)."""
        return float(ks_2samp(self.prob, self.validation_scores).statistic)

    @property
    def kind(self) -> str:
        """One of VERDICTS, decided by the comparison as registered."""
        if self.source.auc >= ANOTHER_POPULATION_AUC:
            return ANOTHER
        if self.source.auc >= SHIFTED_AUC or self.source.mmd.p_value < SHIFT_P_VALUE:
            return SHIFTED
        return LIKE

    @property
    def verdict(self) -> str:
        s, a = self.source, self.adapted
        told = (f"a classifier tells these {self.images} images of {self.patients} patients "
                f"from {self.compared_with} at AUC {s.auc:.2f}"
                + (f" ({a.auc:.2f} adapted to them)" if a else ""))
        if self.kind == ANOTHER:
            return (f"{ANOTHER}: {told}, at or beyond the {ANOTHER_POPULATION_AUC:.2f} the "
                    "training hospital's own unseen images stay below at any prevalence; "
                    f"{s.flagged_share:.0%} of the images lie beyond all but 1% of "
                    "validation's. Do not use it here without local labels: pneumo-exp "
                    "evaluate on labelled cases, then a site search (docs/sites.md).")
        if self.kind == SHIFTED:
            return (f"{SHIFTED}: {told} (MMD p = {s.mmd.p_value:.3f})"
                    + (f", at or beyond the {SHIFTED_AUC:.2f} held-out validation stays below"
                       if s.auc >= SHIFTED_AUC else "")
                    + ". Adapt it to this site (pneumo-exp adapt), then verify on labelled "
                    "cases (pneumo-exp evaluate).")
        return (f"{LIKE}: {told} (MMD p = {s.mmd.p_value:.3f}), within what the training "
                "hospital's own images show. Verify on labelled cases (pneumo-exp evaluate) "
                "before use: no image test sees every change that matters.")


def _look(features: np.ndarray, reference: FeatureReference, groups: np.ndarray,
          prevalence: float | None) -> Look:
    """The site's images' `features` against validation's reference drawn to `prevalence`
    (None: as it is), each side's images grouped by patient."""
    projected = reference.project(features)
    rows = reference.drawn_to(prevalence)
    drawn = reference.seen_at(prevalence)[rows]
    patients = reference.groups[rows] if reference.knows_classes else None
    return Look(reference.distance(features), reference.limit,
                classifier_auc(drawn, projected, groups, reference_groups=patients),
                mmd_test(drawn, projected, reference_groups=patients, site_groups=groups),
                projected, drawn)


def assess_site(model: PneumoniaClassifier, arrays: dict[Any, np.ndarray],
                groups: np.ndarray, skipped: int = 0) -> SiteCheck:
    """The check of `model` on decoded images (by preprocessing), `groups` their patients."""
    contract = model.contract
    if contract.features is None:
        raise UserError("this version keeps no picture of its validation images' features (a "
                        "version registered before site checks read them): promote it again, "
                        "then check the site.")
    n, patients = len(groups), len(np.unique(groups))
    if n < MIN_SITE_IMAGES:
        raise DataError(f"{n} readable images are too few for a site check: it needs at least "
                        f"{MIN_SITE_IMAGES} (a few patients do not show a population; 120 or "
                        "more show it best).")
    if patients < MIN_SITE_PATIENTS:
        raise DataError(f"{n} images of {patients} patient{'s' * (patients != 1)} are too few "
                        f"for a site check: it needs images of at least {MIN_SITE_PATIENTS} "
                        "patients (a few patients do not show a population). Patients are told "
                        "by the DICOM PatientID, else by the folder's labels.csv, else by the "
                        "file name (person1_*, IM-0001-*).")
    prob = model.probabilities(arrays)
    validated = contract.validated_figures()
    prevalence = estimated_prevalence(float(np.mean(prob >= model.threshold)), validated)
    figures = [Validated.value(validated.sensitivity), Validated.value(validated.specificity)]
    chance = ("sensitivity {:.2f}, specificity {:.2f}".format(*figures)  # that estimate nothing
              if prevalence is None and None not in figures else "")
    drawn = prevalence is not None and contract.features.knows_classes
    at = prevalence if drawn else None
    source = _look(model.features(arrays), contract.features, groups, at)
    found = None
    models = [m.model for m in model.members]
    inputs = [arrays[m.preprocessing] for m in model.members]
    if contract.features_adapted is not None and can_adapt(models, inputs):
        with adapted(models, inputs):
            found = _look(model.features(arrays), contract.features_adapted, groups, at)
    return SiteCheck(n, skipped, prob, model.threshold, dict(contract.reference),
                     contract.features.scores, source, found, patients, prevalence, drawn,
                     chance)


def site_patients(files: list[Path], decoded: Decoded, root: Path | None) -> np.ndarray:
    """The patient of each decoded file (`decoded.readable` of `files`): the hashed DICOM
    PatientID, else its row of ROOT/labels.csv, else the id its name carries (docs/sites.md,
    section 1)."""
    keys = {i: patient_key(f.patient) for i, f in decoded.facts.items() if f.patient}
    rest = [i for i in decoded.readable if i not in keys]
    if rest and root is not None and (root / LABELS_CSV).is_file():
        every = [f.relative_to(root).as_posix() for f in files]  # links as they are named
        csv = csv_patients(root, every, [every[i] for i in rest],
                           classes=False)  # the check reads no label
        keys.update({i: csv[every[i]] for i in rest} if csv is not None else {})
    return np.array([keys.get(i) or patient_id(files[i].name) for i in decoded.readable])


def check_figure(check: SiteCheck, title: str) -> Any:
    """The page: scores against validation's, each image's distance, the site and
    validation on the first two components, the figures and the verdict."""
    fig, ((score_ax, image_ax), (map_ax, text_ax)) = plt.subplots(2, 2, figsize=(11, 9))
    val = check.validation_scores
    score_ax.step(np.sort(val), np.arange(1, len(val) + 1) / len(val), where="post",
                  color="black", label="validation")
    score_ax.step(np.sort(check.prob), np.arange(1, check.images + 1) / check.images,
                  where="post", label=f"this site: {check.positive_share:.0%} PNEUMONIA")
    score_ax.axvline(check.threshold, color="grey", ls=":",
                     label=f"threshold {check.threshold:.3f}")
    score_ax.set(xlabel="calibrated probability of PNEUMONIA", ylabel="share of images at or "
                 "below", title="Scores (they move with prevalence: they do not decide)")
    for name, look in check.looks.items():
        image_ax.hist(look.distance / look.limit, bins=30, alpha=0.6, label=name)
    image_ax.axvline(1.0, color="red", ls="--", label="all but 1% of validation's")
    image_ax.set(xlabel="feature distance from validation's (1 = the flag)", ylabel="images",
                 title="Each image")
    s = check.source
    map_ax.scatter(s.reference[:, 0], s.reference[:, 1], s=6, c="black", alpha=0.5,
                   label="validation")
    map_ax.scatter(s.projected[:, 0], s.projected[:, 1], s=6, alpha=0.6, label="this site")
    map_ax.set(xlabel="component 1", ylabel="component 2",
               title="Features as registered, first two components")
    for ax in (score_ax, image_ax, map_ax):
        ax.legend(fontsize=8)
    text_ax.axis("off")
    lines = [f"images read      {check.images} ({check.skipped} skipped), "
             f"{check.patients} patients",
             "est. prevalence  " + ("unknown" if check.prevalence is None else
                                    f"{check.prevalence:.0%} PNEUMONIA (BBSE)"),
             "validation       " + ("drawn to it" if check.drawn else "at its own share")]
    for name, look in check.looks.items():
        lines += [f"{name}:", f"  classifier AUC {look.auc:.3f} (shifted >= {SHIFTED_AUC}, "
                  f"another >= {ANOTHER_POPULATION_AUC})",
                  f"  MMD p-value    {look.mmd.p_value:.3f}",
                  f"  beyond the flag {look.flagged_share:.1%} (validation 1%)"]
    lines += [f"PNEUMONIA share  {check.positive_share:.1%} (validation "
              f"{check.validation.get('positive_share', float('nan')):.1%})",
              f"scores vs val.   KS {check.ks:.3f}", "",
              *textwrap.wrap("Verdict: " + check.verdict, 52)]
    text_ax.text(0, 1, "\n".join(lines), va="top", fontsize=9, family="monospace")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def check_html(check: SiteCheck, png: bytes, title: str, about: dict[str, str]) -> str:
    listed = "<br>".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in about.items())
    return html_page(title, check.verdict, f"""<p>{listed}</p>
<img alt="scores, feature distances and the features' first components against validation"
 style="width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<p>No label was read. The tests compare what the network sees of these images with what it
saw of its validation images; they cannot show every change that matters, so verify on
labelled cases before use.</p></body></html>
""")


def run_site_check(model_uri: str, files: list[Path], root: Path, images_from: str,
                   name: str, out: Path) -> tuple[SiteCheck, Path, str]:
    """Check the version `model_uri` on the image `files` (under `root`, whose labels.csv
    may name their patients), then log the figures and the page as an evaluation run, and
    write the page to `out`; (the check, the page, the run id)."""
    model = classifier(load(model_uri))
    decoded = decode_many(files, {m.preprocessing for m in model.members})
    read = [files[i] for i in decoded.readable]
    if not read:
        raise DataError(f"none of the {len(files)} files of {images_from} is a readable "
                        "chest radiograph.")
    check = assess_site(model, decoded.arrays, site_patients(files, decoded, root),
                        len(decoded.skipped))
    title = f"Site check: {model_uri} on {name}"
    png = png_bytes(check_figure(check, title))
    with evaluation_run(model_uri, f"site-check-{name}", files_fingerprint(root, read)) as run:
        mlflow.log_params({"model_uri": model_uri, "data": images_from, "images": check.images,
                           "skipped_files": check.skipped, "check": "site, unlabeled",
                           "patients": check.patients, "verdict": check.kind,
                           "validation": "drawn to the site's prevalence" if check.drawn
                           else "at its own prevalence"})
        metrics = {"site_auc": check.source.auc, "site_mmd_p": check.source.mmd.p_value,
                   "site_flagged_share": check.source.flagged_share,
                   "site_positive_share": check.positive_share, "site_score_ks": check.ks}
        if check.prevalence is not None:
            metrics["site_estimated_prevalence"] = check.prevalence
        if check.adapted is not None:
            metrics.update({"adapted_site_auc": check.adapted.auc,
                            "adapted_site_mmd_p": check.adapted.mmd.p_value,
                            "adapted_flagged_share": check.adapted.flagged_share})
        mlflow.log_metrics(rounded(metrics))
        page = check_html(check, png, title, {"model": model_uri, "data": images_from,
                                              "evaluation run": run.info.run_id})
        written = keep_page(png, page, (SITE_CHECK_PNG, SITE_CHECK_HTML), out,
                         f"{model_uri.removeprefix('models:/')}-{name}-site-check")
    return check, written, run.info.run_id
