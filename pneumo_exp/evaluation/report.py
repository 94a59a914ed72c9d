"""A site's verdict on a registered version from its own labelled cases, on one page: the
ROC with the stored operating point, the confusion matrix and the reliability diagram at
that point, sensitivity and specificity with exact (Clopper-Pearson) intervals, and whether
the sensitivity the version was promoted for holds here. A PNG, and an HTML page that
embeds it (opened in any browser, no server). The threshold is never re-chosen here: a
small local sample verifies a threshold, it does not tune one.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import binomtest
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, roc_auc_score, roc_curve

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.evaluation.calibration import ECE_BINS, expected_calibration_error
from pneumo_exp.evaluation.plots import plt

CONFIDENCE = 0.95


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
class SiteReport:
    sensitivity: Proportion
    specificity: Proportion
    auc: float
    ece: float
    threshold: float
    target: float  # the validation sensitivity the version was promoted for

    @property
    def verdict(self) -> str:
        low, high = self.sensitivity.interval
        s, t = self.sensitivity, self.target
        if low >= t:
            return (f"meets the target: sensitivity {s.text()} is at least {t:.2f} with "
                    f"{CONFIDENCE:.0%} confidence at the stored threshold.")
        if high < t:
            return (f"falls short: sensitivity {s.text()} is below the {t:.2f} the version "
                    "was promoted for, even at the interval's top. Do not use it here at "
                    "this threshold.")
        needed = cases_needed(s.value, t)
        more = (f"about {needed} PNEUMONIA cases at this sensitivity would show it"
                if needed else "at this sensitivity no number of cases would show it")
        return (f"not shown: the interval of sensitivity {s.text()} holds the target "
                f"{t:.2f}; {more}.")


def site_report(y_true: np.ndarray, prob: np.ndarray, threshold: float,
                target: float) -> SiteReport:
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    pred = prob >= threshold
    positives, negatives = y_true == 1, y_true == 0
    auc = (float(roc_auc_score(y_true, prob)) if positives.any() and negatives.any()
           else float("nan"))
    return SiteReport(Proportion(int((pred & positives).sum()), int(positives.sum())),
                      Proportion(int((~pred & negatives).sum()), int(negatives.sum())),
                      auc, expected_calibration_error(y_true, prob), threshold, target)


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
    positives_and_negatives = len(np.unique(y_true)) == 2
    if positives_and_negatives:
        RocCurveDisplay.from_predictions(y_true, prob, ax=roc_ax, name="PNEUMONIA vs NORMAL",
                                         plot_chance_level=True)
        fpr, tpr, thresholds = roc_curve(y_true, prob)
        i = int(np.argmin(np.abs(thresholds - report.threshold)))
        roc_ax.plot(fpr[i], tpr[i], "o", color="red", markersize=9,
                    label=f"stored threshold {report.threshold:.3f}")
        roc_ax.legend(loc="lower right", fontsize=8)
    roc_ax.set_title(f"ROC (AUC {report.auc:.3f})", fontsize=10)
    ConfusionMatrixDisplay.from_predictions(
        y_true, (prob >= report.threshold).astype(int), labels=[0, 1],
        display_labels=list(CLASS_NAMES), ax=cm_ax, colorbar=False, cmap="Blues")
    cm_ax.set_title(f"At the stored threshold {report.threshold:.3f}", fontsize=10)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, ECE_BINS - 1)
    filled = [b for b in range(ECE_BINS) if np.any(which == b)]
    rel_ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    rel_ax.plot([prob[which == b].mean() for b in filled],
                [y_true[which == b].mean() for b in filled], "o-", label="this site")
    rel_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability of PNEUMONIA",
               ylabel="fraction PNEUMONIA")
    rel_ax.legend(fontsize=8)
    rel_ax.set_title(f"Reliability (ECE {report.ece:.3f})", fontsize=10)
    text_ax.axis("off")
    text_ax.text(0, 1, "\n".join(_lines(report)), va="top", fontsize=10, wrap=True,
                 family="monospace")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _lines(report: SiteReport) -> list[str]:
    import textwrap

    return [f"PNEUMONIA cases   {report.sensitivity.total}",
            f"NORMAL cases      {report.specificity.total}",
            f"sensitivity       {report.sensitivity.text()}",
            f"specificity       {report.specificity.text()}",
            f"AUC               {report.auc:.3f}",
            f"target            sensitivity >= {report.target:.2f}",
            "", *textwrap.wrap("Verdict: " + report.verdict, 52),
            "", *textwrap.wrap("Intervals are exact (Clopper-Pearson) 95%. The threshold is "
                               "the version's, chosen on its validation set; it is not "
                               "re-chosen from these cases.", 52)]


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def report_html(report: SiteReport, png: bytes, title: str, about: dict[str, str]) -> str:
    """One self-contained page: the figure embedded, the figures and verdict as text."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in {**about,
                                "PNEUMONIA cases": str(report.sensitivity.total),
                                "NORMAL cases": str(report.specificity.total),
                                "sensitivity [95% exact]": report.sensitivity.text(),
                                "specificity [95% exact]": report.specificity.text(),
                                "AUC": f"{report.auc:.3f}",
                                "calibration error (ECE)": f"{report.ece:.3f}",
                                "threshold (stored)": f"{report.threshold:.3f}",
                                "target sensitivity": f"{report.target:.2f}"}.items())
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
th{{text-align:left;padding-right:2em}}td,th{{padding:2px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p><strong>Verdict:</strong> {html.escape(report.verdict)}</p>
<table>{rows}</table>
<img alt="ROC, confusion matrix and reliability diagram" style="width:100%"
 src="data:image/png;base64,{image}">
<p>Intervals are exact (Clopper-Pearson) 95%. The threshold is the version's, chosen on its
validation set; it is not re-chosen from these cases: on held-out patients, thresholds chosen
from 20 to 80 local images did worse than the stored one.</p>
</body></html>
"""
