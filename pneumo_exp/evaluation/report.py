"""A site's verdict on a registered version from its own labelled cases, on one page (a PNG,
and an HTML page that embeds it; docs/sites.md, "2. A few labelled cases"). The threshold
is never re-chosen here: a small local sample verifies a threshold, it does not tune one.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import binomtest

from pneumo_exp.evaluation.calibration import ECE_BINS, expected_calibration_error
from pneumo_exp.evaluation.metrics import binary_metrics, confusion_counts
from pneumo_exp.evaluation.plots import confusion_panel, plt, roc_panel

CONFIDENCE = 0.95
RELIABILITY_BINS = 10  # equal-count bins of the reliability panel


@dataclass(frozen=True)
class Proportion:
    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        """The exact (Clopper-Pearson) 95% interval."""
        if not self.total:
            return float("nan"), float("nan")
        ci = binomtest(self.hits, self.total).proportion_ci(CONFIDENCE, method="exact")
        return float(ci.low), float(ci.high)

    def text(self) -> str:
        low, high = self.interval
        return f"{self.value:.3f} [{low:.3f}, {high:.3f}] ({self.hits}/{self.total})"


@dataclass(frozen=True)
class Validated:
    """What the version showed on its own validation set at the stored threshold: counts
    (so intervals), or for a version registered before they were kept, the figures."""

    sensitivity: Proportion | float | None = None
    specificity: Proportion | float | None = None

    @staticmethod
    def value(figure: Proportion | float | None) -> float | None:
        return figure.value if isinstance(figure, Proportion) else figure

    @staticmethod
    def text(figure: Proportion | float | None) -> str:
        if isinstance(figure, Proportion):
            return figure.text()
        return "-" if figure is None else f"{figure:.3f}"


@dataclass(frozen=True)
class SiteReport:
    sensitivity: Proportion
    specificity: Proportion
    auc: float
    ece: float
    threshold: float
    target: float  # the validation sensitivity the version was promoted for
    validated: Validated = Validated()

    def shortfalls(self) -> list[str]:
        """Each side whose interval at this site lies wholly below what the version
        validated (sensitivity: at least the target it was promoted for)."""
        out = []
        v = self.validated
        sides = (("sensitivity", self.sensitivity, Validated.value(v.sensitivity) or self.target,
                  "PNEUMONIA", "missed"),
                 ("specificity", self.specificity, Validated.value(v.specificity), "NORMAL",
                  "flagged"))
        for name, site, reference, cases, what in sides:
            if reference is None or not site.total or site.interval[1] >= reference:
                continue
            wrong = site.total - site.hits
            out.append(f"{name} {site.text()} is below the {reference:.2f} validated: {wrong} "
                       f"of {site.total} {cases} studies {what}")
        return out

    @property
    def verdict(self) -> str:
        """One sentence, its first words the verdict: worse than validated, holds, or not
        shown (yet)."""
        short = self.shortfalls()
        if short:
            advice = ("do not use it here at this threshold" if short[0].startswith(
                "sensitivity") else "adapt it to this site first (pneumo-exp adapt), then "
                "evaluate again")
            return f"worse than validated: {'; '.join(short)}; {advice}."
        s, t, v = self.sensitivity, self.target, self.validated
        both = (f"sensitivity {s.text()} (validated {Validated.text(v.sensitivity)}) and "
                f"specificity {self.specificity.text()} (validated "
                f"{Validated.text(v.specificity)})")
        if s.interval[0] >= t:
            return (f"holds: {both} at the stored threshold; sensitivity is at least {t:.2f} "
                    f"with {CONFIDENCE:.0%} confidence.")
        needed = cases_needed(s.value, t)
        more = (f"about {needed} PNEUMONIA cases at this sensitivity would show it reaches "
                f"{t:.2f}" if needed else f"at this sensitivity no number of cases would show "
                f"it reaches {t:.2f}")
        return f"not shown: {both} are within what was validated; {more}."


def proportions(figures: dict[str, float]) -> dict[str, Proportion]:
    """Sensitivity and specificity of `binary_metrics`' figures, as counts."""
    (tn, fp), (fn, tp) = confusion_counts(figures)
    return {"sensitivity": Proportion(tp, tp + fn), "specificity": Proportion(tn, tn + fp)}


def site_report(y_true: np.ndarray, prob: np.ndarray, threshold: float, target: float,
                validated: Validated | None = None) -> SiteReport:
    figures = binary_metrics(y_true, prob, threshold)
    return SiteReport(**proportions(figures), auc=figures["auc"],
                      ece=expected_calibration_error(y_true, prob), threshold=threshold,
                      target=target, validated=validated or Validated())


def cases_needed(sensitivity: float, target: float, limit: int = 10000) -> int | None:
    """The fewest PNEUMONIA cases whose exact interval, at this sensitivity, lies above the
    target; None when it cannot (sensitivity at or below the target)."""
    if not sensitivity > target:
        return None
    n = 10
    while n <= limit:
        hits = round(sensitivity * n)
        if Proportion(hits, n).interval[0] >= target:
            return n
        n = int(n * 1.1) + 1
    return None


def report_figure(y_true: np.ndarray, prob: np.ndarray, report: SiteReport,
                  title: str) -> Figure:
    """The page: ROC, confusion matrix, reliability diagram, figures and verdict."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    (roc_ax, cm_ax), (rel_ax, text_ax) = axes
    if len(np.unique(y_true)) == 2:
        roc_panel(roc_ax, y_true, prob, report.threshold, "stored threshold", markersize=9)
    roc_ax.set_title(f"ROC (AUC {report.auc:.3f})", fontsize=10)
    confusion_panel(cm_ax, y_true, (prob >= report.threshold).astype(int),
                    f"At the stored threshold {report.threshold:.3f}")
    # equal-count bins, each with its count: a site's few hundred studies crowd the
    # confident ends, and fixed-width bins leave the middle ones a handful each
    bins = [b for b in np.array_split(np.argsort(prob, kind="stable"),
                                      max(1, min(RELIABILITY_BINS, len(prob) // 10))) if len(b)]
    x = [float(prob[b].mean()) for b in bins]
    y = [float(y_true[b].mean()) for b in bins]
    rel_ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    rel_ax.plot(x, y, "o-", label=f"this site: {len(bins)} bins of ~{len(prob) // len(bins)} "
                "studies")
    for xi, yi, b in zip(x, y, bins, strict=True):
        rel_ax.annotate(str(len(b)), (xi, yi), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="dimgrey")
    rel_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability of PNEUMONIA",
               ylabel="fraction PNEUMONIA")
    rel_ax.legend(fontsize=8)
    rel_ax.set_title(f"Reliability (ECE {report.ece:.3f}, {ECE_BINS} fixed bins)", fontsize=10)
    text_ax.axis("off")
    text_ax.text(0, 1, "\n".join(_lines(report)), va="top", fontsize=10, wrap=True,
                 family="monospace")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _lines(report: SiteReport) -> list[str]:
    v = report.validated
    return [f"PNEUMONIA cases   {report.sensitivity.total}",
            f"NORMAL cases      {report.specificity.total}",
            f"sensitivity       {report.sensitivity.text()}",
            f"  validated       {Validated.text(v.sensitivity)}",
            f"specificity       {report.specificity.text()}",
            f"  validated       {Validated.text(v.specificity)}",
            f"AUC               {report.auc:.3f}",
            f"target            sensitivity >= {report.target:.2f}",
            "", *textwrap.wrap("Verdict: " + report.verdict, 52),
            "", *textwrap.wrap("Intervals are exact (Clopper-Pearson) 95%. The threshold is "
                               "the version's, chosen on its validation set; it is not "
                               "re-chosen from these cases.", 52)]


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def report_html(report: SiteReport, png: bytes, title: str, about: dict[str, str]) -> str:
    """One self-contained page: the figure embedded, the figures and verdict as text."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in {**about,
                                "PNEUMONIA cases": str(report.sensitivity.total),
                                "NORMAL cases": str(report.specificity.total),
                                "sensitivity [95% exact]": report.sensitivity.text(),
                                "sensitivity validated": Validated.text(
                                    report.validated.sensitivity),
                                "specificity [95% exact]": report.specificity.text(),
                                "specificity validated": Validated.text(
                                    report.validated.specificity),
                                "AUC": f"{report.auc:.3f}",
                                "calibration error (ECE)": f"{report.ece:.3f}",
                                "threshold (stored)": f"{report.threshold:.3f}",
                                "target sensitivity": f"{report.target:.2f}"}.items())
    return html_page(title, report.verdict, f"""<table>{rows}</table>
<img alt="ROC, confusion matrix and reliability diagram" style="width:100%"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
<p>Intervals are exact (Clopper-Pearson) 95%. The threshold is the version's, chosen on its
validation set; it is not re-chosen from these cases: on held-out patients, thresholds chosen
from 20 to 80 local images did worse than the stored one.</p>
</body></html>
""", style="\nth{text-align:left;padding-right:2em}td,th{padding:2px}")


def html_page(title: str, verdict: str, body: str, style: str = "") -> str:
    """A self-contained page: its title, the verdict, then `body`, its figure embedded."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}{style}</style></head>
<body><h1>{html.escape(title)}</h1>
<p><strong>Verdict:</strong> {html.escape(verdict)}</p>
{body}"""
