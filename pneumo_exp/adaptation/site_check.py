"""`pneumo-exp site-check`: "will it work on our scanners?", asked before anything is
labelled. A site's unlabeled images (a folder, or a PACS query) are compared with the
version's validation images, as the version saw them (its `reference`, kept at promote):

- the scores: the share called PNEUMONIA at the stored threshold, and how far the
  distribution of calibrated scores lies from validation's (the largest gap between the
  two cumulative distributions, Kolmogorov-Smirnov's statistic). Both also move with the
  site's prevalence, which is unknown here: they describe, they do not decide;
- the batch-normalization statistics (serving/shift.py): the site's shift, its images
  together, against validation's, and the share of its images beyond the 99th percentile
  of validation's image shift. These decide the verdict;

and the same for the version adapted to these images in memory (batch_norm.py, nothing
registered), which shows what `pneumo-exp adapt` would change: a shifted site comes back
near validation's shift. The answer is one line
(looks like the training data, or shifted: adapt, then verify on labelled cases) and a
one-page figure, logged as an evaluation run like the site report. What it cannot see: a
shift the normalization statistics do not show (the test split's patients, on which the
networks lose specificity, shift no more than validation's); only labelled cases
(`pneumo-exp evaluate`) show what the answers are worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from pneumo_exp.adaptation.batch_norm import MIN_ADAPTATION_IMAGES, adapt_batch_norm
from pneumo_exp.data.images import decode_many, files_fingerprint
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.plots import plt
from pneumo_exp.evaluation.report import png_bytes
from pneumo_exp.serving.model import SHIFT_LIMIT, PneumoniaClassifier, classifier
from pneumo_exp.serving.predict import keep_page, load
from pneumo_exp.serving.shift import shift
from pneumo_exp.tracking.names import (
    EVALUATION_EXPERIMENT,
    ROLE_EVALUATION,
    SITE_CHECK_HTML,
    SITE_CHECK_PNG,
    TAG_MODEL_URI,
    rounded,
)
from pneumo_exp.tracking.runs import start_run
from pneumo_exp.tracking.store import connect, experiment_id

# The rules of the verdict: a site is shifted when its images together lie this many times
# farther than validation's, or when more of its images than this share lie beyond the
# 99th percentile of validation's (1% of validation's do).
SITE_SHIFT_RATIO = 1.5
FLAGGED_SHARE = 0.05


@dataclass(frozen=True)
class Look:
    """A site's images as one version sees them."""

    prob: np.ndarray  # calibrated probabilities of PNEUMONIA
    positive_share: float
    image_shift: np.ndarray
    layer_shift: np.ndarray
    flagged_share: float  # beyond validation's 99th percentile

    @property
    def site_shift(self) -> float:
        return float(self.layer_shift.mean())


@dataclass(frozen=True)
class SiteCheck:
    images: int
    skipped: int
    reference: dict[str, Any]
    source: Look
    adapted: Look | None  # None when too few images to adapt on
    ks: float  # the scores' distance from validation's

    @property
    def shifted(self) -> bool:
        return (self.source.site_shift > SITE_SHIFT_RATIO * self.reference["site_shift"]
                or self.source.flagged_share > FLAGGED_SHARE)

    @property
    def verdict(self) -> str:
        ref, s = self.reference, self.source
        figures = (f"shift {s.site_shift:.2f} against validation's {ref['site_shift']:.2f}, "
                   f"{s.flagged_share:.0%} of the images beyond all but 1% of validation's")
        if self.shifted:
            after = (f"; adapted on them, it is {self.adapted.site_shift:.2f}"
                     if self.adapted else "")
            return (f"shifted: {figures}{after}. Adapt it to this site (pneumo-exp adapt), "
                    "then verify on labelled cases (pneumo-exp evaluate).")
        return (f"looks like the training data: {figures}. Normalization statistics cannot "
                "show every shift: verify on labelled cases (pneumo-exp evaluate) before use.")


def _look(model: PneumoniaClassifier, arrays: dict[Any, np.ndarray],
          reference: dict[str, Any]) -> Look:
    prob = model.probabilities(arrays)
    found = shift([m.model for m in model.members], [arrays[m.preprocessing]
                                                     for m in model.members])
    assert found is not None  # checked: the version has batch normalization
    return Look(prob, float(np.mean(prob >= model.threshold)), found.images, found.layers,
                float(np.mean(found.images > reference[SHIFT_LIMIT])))


def ks_distance(prob: np.ndarray, quantiles: list[float]) -> float:
    """The largest gap between the site's score distribution and validation's, the latter
    known by its quantiles (every 5%)."""
    q = np.asarray(quantiles)
    grid = np.linspace(0, 1, len(q))
    xs = np.unique(np.concatenate([q, prob]))
    site = np.searchsorted(np.sort(prob), xs, side="right") / len(prob)
    val = np.interp(xs, q, grid, left=0.0, right=1.0)
    return float(np.max(np.abs(site - val)))


def check_site(model_uri: str, files: list[Path], images_from: str) -> tuple[SiteCheck,
                                                                              list[Path]]:
    """The check of the version `model_uri` on the image `files`; the files read."""
    model = classifier(load(model_uri))
    reference = dict(getattr(model, "reference", None) or {})
    if SHIFT_LIMIT not in reference:
        raise UserError(f"{model_uri} keeps no picture of its validation images (a version "
                        "registered before site checks, or a network without batch "
                        "normalization): promote it again, then check the site.")
    decoded = decode_many(files, {m.preprocessing for m in model.members})
    read = [files[i] for i in decoded.readable]
    if not read:
        raise DataError(f"none of the {len(files)} files of {images_from} is a readable "
                        "chest radiograph.")
    source = _look(model, decoded.arrays, reference)
    adapted = None
    if len(read) >= MIN_ADAPTATION_IMAGES:
        copy = classifier(load(model_uri))
        for member in copy.members:
            adapt_batch_norm(member.model, decoded.arrays[member.preprocessing])
        adapted = _look(copy, decoded.arrays, reference)
    check = SiteCheck(len(read), len(decoded.skipped), reference, source, adapted,
                      ks_distance(source.prob, reference["score_quantiles"]))
    return check, read


def check_figure(check: SiteCheck, threshold: float, title: str) -> Any:
    """The page: scores against validation's, image shifts, the site's shift per layer, the
    figures and the verdict."""
    import textwrap

    fig, ((score_ax, image_ax), (layer_ax, text_ax)) = plt.subplots(2, 2, figsize=(11, 9))
    ref, looks = check.reference, {"this site": check.source}
    if check.adapted is not None:
        looks["adapted to it"] = check.adapted
    q = ref["score_quantiles"]
    score_ax.plot(q, np.linspace(0, 1, len(q)), color="black", label="validation")
    for name, look in looks.items():
        score_ax.step(np.sort(look.prob), np.arange(1, len(look.prob) + 1) / len(look.prob),
                      where="post", label=f"{name}: {look.positive_share:.0%} PNEUMONIA")
    score_ax.axvline(threshold, color="grey", ls=":", label=f"threshold {threshold:.3f}")
    score_ax.set(xlabel="calibrated probability of PNEUMONIA", ylabel="share of images at or "
                 "below", title=f"Scores (validation: {ref['positive_share']:.0%} PNEUMONIA)")
    score_ax.legend(fontsize=8)
    for name, look in looks.items():
        image_ax.hist(look.image_shift, bins=30, alpha=0.6, label=name)
    image_ax.axvline(ref[SHIFT_LIMIT], color="red", ls="--",
                     label=f"validation's 99th percentile {ref[SHIFT_LIMIT]:.2f}")
    image_ax.set(xlabel="image shift", ylabel="images", title="Each image's shift")
    image_ax.legend(fontsize=8)
    layers = np.arange(len(check.source.layer_shift))
    width = 0.8 / (len(looks) + 1)
    layer_ax.bar(layers, ref["layer_shift"], width, label="validation", color="black")
    for k, (name, look) in enumerate(looks.items(), 1):
        layer_ax.bar(layers + k * width, look.layer_shift, width, label=name)
    layer_ax.set_xticks(layers + width * len(looks) / 2, [str(i + 1) for i in layers])
    layer_ax.set(xlabel="batch-normalization layer (each member's in turn)", ylabel="shift",
                 title="The images together, per layer")
    layer_ax.legend(fontsize=8)
    text_ax.axis("off")
    lines = [f"images read      {check.images} ({check.skipped} skipped)",
             f"site shift       {check.source.site_shift:.3f} (validation "
             f"{ref['site_shift']:.3f})",
             f"beyond val. p99  {check.source.flagged_share:.1%} (validation 1%)",
             f"PNEUMONIA share  {check.source.positive_share:.1%} (validation "
             f"{ref['positive_share']:.1%})",
             f"scores vs val.   KS {check.ks:.3f}"]
    if check.adapted is not None:
        lines.append(f"adapted: shift   {check.adapted.site_shift:.3f}, PNEUMONIA "
                     f"{check.adapted.positive_share:.1%}")
    lines += ["", *textwrap.wrap("Verdict: " + check.verdict, 52)]
    text_ax.text(0, 1, "\n".join(lines), va="top", fontsize=10, family="monospace")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def check_html(check: SiteCheck, png: bytes, title: str, about: dict[str, str]) -> str:
    import base64
    import html

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p><strong>Verdict:</strong> {html.escape(check.verdict)}</p>
<p>{"<br>".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in about.items())}</p>
<img alt="scores, image shifts and layer shifts against validation" style="width:100%"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
<p>No label was read. The shift compares the images' batch-normalization statistics with
those the version learned; it cannot show every change that matters, so verify on labelled
cases before use.</p></body></html>
"""


def run_site_check(model_uri: str, files: list[Path], root: Path, images_from: str,
                   name: str, out: Path) -> tuple[SiteCheck, Path, str]:
    """Check, then log the figures and the page as an evaluation run, and write the page
    to `out`; (the check, the page, the run id)."""
    check, read = check_site(model_uri, files, images_from)
    model = classifier(load(model_uri))
    title = f"Site check: {model_uri} on {name}"
    fig = check_figure(check, model.threshold, title)
    png = png_bytes(fig)
    plots.close(fig)
    client = connect()
    with start_run(experiment_id(client, EVALUATION_EXPERIMENT), f"site-check-{name}",
                   ROLE_EVALUATION, files_fingerprint(root, read),
                   {TAG_MODEL_URI: model_uri}) as run:
        mlflow.log_params({"model_uri": model_uri, "data": images_from, "images": check.images,
                           "skipped_files": check.skipped, "check": "site, unlabeled"})
        metrics = {"site_shift": check.source.site_shift,
                   "site_flagged_share": check.source.flagged_share,
                   "site_positive_share": check.source.positive_share, "site_score_ks": check.ks}
        if check.adapted is not None:
            metrics.update({"adapted_site_shift": check.adapted.site_shift,
                            "adapted_positive_share": check.adapted.positive_share})
        mlflow.log_metrics(rounded(metrics))
        page = check_html(check, png, title, {"model": model_uri, "data": images_from,
                                              "evaluation run": run.info.run_id})
        html = keep_page(png, page, (SITE_CHECK_PNG, SITE_CHECK_HTML), out,
                         f"{model_uri.removeprefix('models:/')}-{name}-site-check")
    return check, html, run.info.run_id
