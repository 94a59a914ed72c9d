"""The one writer of a version refuses one without its checks: whom it is for, its views,
validation's features as registered, and as adapted when its members can be adapted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import mlflow
import pytest
from conftest import checked_contract, tiny_base


@pytest.mark.parametrize(("lacking", "says"), [
    ("population", "a population"), ("views", "views"),
    ("features", "the feature reference"),
    ("features_adapted", "the adapted feature reference")])
def test_a_version_without_its_checks_is_not_written(workdir: Path, lacking: str,
                                                     says: str) -> None:
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.tracking.store import connect

    client = connect()
    keras.utils.set_random_seed(0)
    model = tiny_base(32)  # batch-normalized: it can be adapted to validation's 40 images
    whole = checked_contract([model], 32)
    with mlflow.start_run():
        with pytest.raises(ValueError, match=f"lacks {says}: nothing registered"):
            write_version("v", dataclasses.replace(whole, **{lacking: None if lacking != "views"
                                                             else ()}), [model], {})
        assert not client.search_model_versions("name = 'v'")
        write_version("v", whole, [model], {})
    assert len(client.search_model_versions("name = 'v'")) == 1
