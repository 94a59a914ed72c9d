"""A packaged version's contract: written and read back whole, tags derived from it, and
the configs of versions registered before it still read."""

from __future__ import annotations

import json

import pytest

from pneumo_exp.config import PopulationConfig, load_config
from pneumo_exp.data.dicom import ImageFacts
from pneumo_exp.data.images import OUTSIDE
from pneumo_exp.evaluation.report import Proportion
from pneumo_exp.serving.contract import SCHEMA, VersionContract
from pneumo_exp.serving.population import judge
from pneumo_exp.tracking.names import (
    TAG_MIN_SENSITIVITY,
    TAG_TEMPERATURE,
    TAG_THRESHOLD,
    TAG_VALIDATED,
    figure_tag,
)

CONTRACT = VersionContract(members=((96, 1), (64, 3)), threshold=0.779, temperature=0.743,
                           views=("original", "crop 0.9"), min_sensitivity=0.875,
                           validated={"sensitivity": (350, 395), "specificity": (130, 142)},
                           reference={"site_shift": 0.27, "images": 537},
                           population=PopulationConfig("adults", 18, None, ["PA"], "refuse"))


def test_a_contract_reads_back_what_it_wrote() -> None:
    written = json.loads(json.dumps(CONTRACT.to_dict()))  # as the pyfunc config stores it
    assert written["schema"] == SCHEMA
    assert VersionContract.from_dict(written) == CONTRACT


def test_tags_are_derived_from_the_contract() -> None:
    assert CONTRACT.tags() == {TAG_THRESHOLD: "0.779000", TAG_TEMPERATURE: "0.743000",
                               TAG_MIN_SENSITIVITY: "0.875"}


def test_a_copy_changes_only_what_it_is_given() -> None:
    site = CONTRACT.with_changes(threshold=0.5)
    assert site.threshold == 0.5
    assert (site.views, site.reference, site.validated) == (
        CONTRACT.views, CONTRACT.reference, CONTRACT.validated)


def test_configs_from_before_the_contract_still_read() -> None:
    """The flat configs of earlier versions: members and threshold only (the first
    versions), then temperature, views and reference; the validated counts and the
    sensitivity were registry tags."""
    oldest = VersionContract.from_dict({"members": [{"image_size": 48, "channels": 1}],
                                        "threshold": 0.5})
    assert (oldest.schema, oldest.temperature, oldest.views, oldest.reference) == (
        1, 1.0, ("original",), {})
    assert oldest.min_sensitivity is None and oldest.validated is None
    tags = {TAG_VALIDATED: json.dumps({"sensitivity": [380, 396], "specificity": [136, 142]}),
            TAG_MIN_SENSITIVITY: "0.9"}
    later = VersionContract.from_dict(
        {"members": [{"image_size": 96, "channels": 1}], "threshold": 0.8,
         "temperature": 0.9, "views": ["original"], "reference": {"shift_limit": 0.7}}, tags)
    assert later.min_sensitivity == 0.9
    assert later.validated_figures().specificity == Proportion(136, 142)
    # before the counts, the figures at the threshold were tags
    figures = {figure_tag("val_sensitivity_at_thr"): "0.9600",
               figure_tag("val_specificity_at_thr"): "0.9580"}
    assert oldest.validated_figures(figures).specificity == pytest.approx(0.958)


def test_a_version_from_before_its_population_is_for_the_training_datas() -> None:
    """A version registered before versions carried whom they are for (a flat config, or
    the contract before `population`, or an adaptation of one) is for the patients of the
    data every version was then trained on: Kermany's children, as the defaults state them;
    so an adult's DICOM is flagged or refused on it too."""
    kermany = load_config("aug_cnn").population
    assert (kermany.min_age, kermany.max_age, kermany.views) == (1, 5, ["PA", "AP"])
    for config in ({"members": [{"image_size": 48, "channels": 1}], "threshold": 0.5},
                   {**CONTRACT.to_dict(), "population": None}):
        old = VersionContract.from_dict(config)
        assert old.population == kermany
        adult = judge(old.population, ImageFacts(age=45.0, view="PA"))
        assert adult is not None and adult.reason.startswith(OUTSIDE) and "45" in adult.reason


def test_a_contract_refuses_what_no_version_can_be() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        VersionContract(members=(), threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        VersionContract(members=((48, 1),), threshold=1.5)
