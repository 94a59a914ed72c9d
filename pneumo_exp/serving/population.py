"""Whom a version is for, enforced on the images whose headers say whom they show: a DICOM
image outside the version's population (config.PopulationConfig) is flagged or refused by
its `outside` policy, one of unknown age flagged; ages in completed years, views whatever
their case (docs/sites.md, "Whom a version is for"). A PNG or JPEG has no header."""

from __future__ import annotations

from dataclasses import dataclass

from pneumo_exp.config import PopulationConfig
from pneumo_exp.data.dicom import ImageFacts, age_words, completed_years
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


def in_range(age: float, low: float | None, high: float | None) -> bool:
    """Whether an age (completed months / 12) lies in [low, high], the upper bound counted
    in completed years when it is whole (5 holds 5 years and 11 months), else in months."""
    top = completed_years(age) if high is not None and float(high).is_integer() else age
    return (low is None or age >= low) and (high is None or top <= high)


def judge(population: PopulationConfig | None, facts: ImageFacts | None) -> Judgement | None:
    """Why an image lies outside `population`, or None when nothing says it does."""
    if population is None or facts is None:
        return None
    outside = []
    allowed = [str(v).strip().upper() for v in population.views]  # as DICOM writes them
    if allowed and facts.view and facts.view.strip().upper() not in allowed:
        outside.append(f"a {facts.view.strip().upper()} view (this version is for "
                       f"{', '.join(allowed)} views)")
    bounded = population.min_age is not None or population.max_age is not None
    if bounded and facts.age is not None and not in_range(
            facts.age, population.min_age, population.max_age):
        rests = f" ({facts.age_missing})" if facts.age_missing else ""
        outside.append(f"a patient aged {age_words(facts.age)}{rests} (this version is for "
                       f"patients {_ages(population)})")
    if outside:
        return Judgement(f"{OUTSIDE}: {'; '.join(outside)}", population.outside == REFUSE)
    if bounded and facts.age is None:
        return Judgement(f"age unknown: {facts.age_missing}; this version is for patients "
                         f"{_ages(population)}", refuse=False)
    if bounded and facts.age_missing:
        return Judgement(f"age uncertain: {facts.age_missing} ({age_words(facts.age)}); this "
                         f"version is for patients {_ages(population)}", refuse=False)
    return None
