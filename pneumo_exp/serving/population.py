"""Whom a version is for, enforced on the images whose headers say whom they show.

A version carries its training data's population (config.PopulationConfig: an age range,
the views, in words for its card). A DICOM image outside it gets no silent probability:
by the version's `outside` policy it is flagged (a probability, and a note in `check`) or
refused (no probability, and the reason). An image whose age is missing or unreadable is
flagged saying so, whatever the policy: the pixels may still be a child's. A PNG or JPEG
has no header: the feature check (features.py) is all there is for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pneumo_exp.config import PopulationConfig
from pneumo_exp.data.dicom import ImageFacts
from pneumo_exp.data.images import OUTSIDE

REFUSE = "refuse"


@dataclass(frozen=True)
class Judgement:
    reason: str
    refuse: bool  # no probability (the policy refuses, and the image is outside)


def _ages(population: PopulationConfig) -> str:
    low, high = population.min_age, population.max_age
    if low is not None and high is not None:
        return f"aged {low:g}-{high:g}"
    return f"aged {low:g} or more" if low is not None else f"aged up to {high:g}"


def judge(population: PopulationConfig | None, facts: ImageFacts | None) -> Judgement | None:
    """Why an image lies outside `population`, or None when nothing says it does."""
    if population is None or facts is None:
        return None
    outside = []
    if population.views and facts.view and facts.view not in population.views:
        outside.append(f"a {facts.view} view (this version is for "
                       f"{', '.join(population.views)} views)")
    bounded = population.min_age is not None or population.max_age is not None
    if bounded and facts.age is not None and not (
            (population.min_age is None or facts.age >= population.min_age)
            and (population.max_age is None or facts.age <= population.max_age)):
        years = f"{facts.age:.1f}" if facts.age < 2 else f"{facts.age:.0f}"
        outside.append(f"a patient aged {years} years (this version is for patients "
                       f"{_ages(population)})")
    if outside:
        return Judgement(f"{OUTSIDE}: {'; '.join(outside)}", population.outside == REFUSE)
    if bounded and facts.age is None:
        return Judgement(f"age unknown: {facts.age_missing}; this version is for patients "
                         f"{_ages(population)}", refuse=False)
    return None
