"""The site report: exact intervals, a verdict that follows them, one self-contained page."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from pneumo_exp.evaluation.report import (
    Proportion,
    Validated,
    cases_needed,
    png_bytes,
    report_figure,
    report_html,
    site_report,
)


def test_clopper_pearson_by_its_beta_quantiles() -> None:
    low, high = Proportion(45, 50).interval
    assert low == pytest.approx(beta.ppf(0.025, 45, 6), abs=1e-9)
    assert high == pytest.approx(beta.ppf(0.975, 46, 5), abs=1e-9)
    assert Proportion(50, 50).interval[1] == 1.0


VALIDATED = Validated(Proportion(380, 396), Proportion(136, 142))  # 0.960 and 0.958


@pytest.mark.parametrize(("hits", "total", "verdict"), [
    (298, 300, "holds"),                 # 0.993 [0.976, 0.999]
    (40, 50, "worse than validated"),    # 0.80 [0.66, 0.90]
    (19, 20, "not shown"),               # 0.95 [0.75, 1.0]
])
def test_the_verdict_follows_the_interval(hits: int, total: int, verdict: str) -> None:
    y = np.array([1] * total + [0] * 20)
    prob = np.array([0.9] * hits + [0.1] * (total - hits) + [0.2] * 20)
    report = site_report(y, prob, threshold=0.5, target=0.95, validated=VALIDATED)
    assert report.sensitivity == Proportion(hits, total)
    assert report.specificity == Proportion(20, 20)
    assert report.verdict.startswith(verdict)
    if verdict.startswith("worse"):
        assert "missed" in report.verdict and "do not use it here" in report.verdict


def test_a_site_that_keeps_sensitivity_but_flags_normals_is_told_so() -> None:
    """The hidden PACS set's case: sensitivity 0.989, specificity 0.706 against 0.958
    validated: the verdict names the specificity, how many normals are flagged, and what
    to do."""
    y = np.array([1] * 187 + [0] * 102)
    prob = np.array([0.9] * 185 + [0.1] * 2 + [0.8] * 30 + [0.2] * 72)
    report = site_report(y, prob, threshold=0.5, target=0.95, validated=VALIDATED)
    assert report.verdict.startswith("worse than validated: specificity 0.706 [0.607, 0.792]")
    assert "below the 0.96 validated: 30 of 102 NORMAL studies flagged" in report.verdict
    assert "adapt it to this site first" in report.verdict
    # a version registered before the counts were kept: judged against its figures
    old = site_report(y, prob, 0.5, 0.95, Validated(0.96, 0.958))
    assert old.verdict.startswith("worse than validated: specificity")


def test_cases_needed_is_where_the_interval_clears_the_target() -> None:
    n = cases_needed(0.98, 0.95)
    assert n is not None and Proportion(round(0.98 * n), n).interval[0] >= 0.95
    assert Proportion(round(0.98 * (n // 2)), n // 2).interval[0] < 0.95
    assert cases_needed(0.95, 0.95) is None


def test_the_page_embeds_the_figure_and_escapes_text() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    prob = np.clip(y * 0.5 + rng.random(80) * 0.5, 0, 1)
    report = site_report(y, prob, 0.6, 0.95, VALIDATED)
    fig = report_figure(y, prob, report, "Site report")
    counts = [t.get_text() for t in fig.axes[2].texts]  # the reliability panel's bins
    assert len(counts) == 8 and sum(map(int, counts)) == 80
    png = png_bytes(fig)
    assert png.startswith(b"\x89PNG")
    page = report_html(report, png, "Site <north>", {"data": "a&b"})
    assert "Site &lt;north&gt;" in page and "a&amp;b" in page
    assert "data:image/png;base64," in page and report.sensitivity.text() in page
