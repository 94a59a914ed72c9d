"""The site report: exact intervals, a verdict that follows them, one self-contained page."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.report import (
    Proportion,
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


@pytest.mark.parametrize(("hits", "total", "verdict"), [
    (298, 300, "meets the target"),   # 0.993 [0.976, 0.999]
    (40, 50, "falls short"),          # 0.80 [0.66, 0.90]
    (19, 20, "not shown"),            # 0.95 [0.75, 1.0]
])
def test_the_verdict_follows_the_interval(hits: int, total: int, verdict: str) -> None:
    y = np.array([1] * total + [0] * 20)
    prob = np.array([0.9] * hits + [0.1] * (total - hits) + [0.2] * 20)
    report = site_report(y, prob, threshold=0.5, target=0.95)
    assert report.sensitivity == Proportion(hits, total)
    assert report.specificity == Proportion(20, 20)
    assert report.verdict.startswith(verdict)


def test_cases_needed_is_where_the_interval_clears_the_target() -> None:
    n = cases_needed(0.98, 0.95)
    assert n is not None and Proportion(round(0.98 * n), n).interval[0] >= 0.95
    assert Proportion(round(0.98 * (n // 2)), n // 2).interval[0] < 0.95
    assert cases_needed(0.95, 0.95) is None


def test_the_page_embeds_the_figure_and_escapes_text() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    prob = np.clip(y * 0.5 + rng.random(80) * 0.5, 0, 1)
    report = site_report(y, prob, 0.6, 0.95)
    fig = report_figure(y, prob, report, "Site report")
    png = png_bytes(fig)
    plots.close(fig)
    assert png.startswith(b"\x89PNG")
    page = report_html(report, png, "Site <north>", {"data": "a&b"})
    assert "Site &lt;north&gt;" in page and "a&amp;b" in page
    assert "data:image/png;base64," in page and report.sensitivity.text() in page
