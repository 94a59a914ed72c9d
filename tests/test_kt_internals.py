"""Keras Tuner's private API that pneumo-exp relies on (pneumo_exp/kt_internals.py) is
still there: this fails, naming what moved, when a Keras Tuner release changes it."""

from __future__ import annotations

import inspect

import keras_tuner as kt
import pytest

from pneumo_exp.search.kt_internals import PRIVATE_API, PRIVATE_ATTRIBUTES, PRIVATE_MODULES


@pytest.mark.parametrize(("owner", "name"), [(o, n) for o, names in PRIVATE_API.items()
                                             for n in names])
def test_private_methods_exist(owner: type, name: str) -> None:
    assert callable(getattr(owner, name, None)), (
        f"keras-tuner {kt.__version__}: {owner.__name__}.{name} is gone; update "
        "pneumo_exp/kt_internals.py")


def test_private_attributes_and_flags_exist(tmp_path) -> None:
    for owner, names in PRIVATE_ATTRIBUTES.items():
        oracle = (owner if owner is not kt.Oracle else kt.oracles.RandomSearchOracle)(
            kt.Objective("score", "max"), max_trials=1)
        for name in names:
            assert hasattr(oracle, name), f"{owner.__name__}.{name} is gone"
    for module, names in PRIVATE_MODULES.items():
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name} is gone"


def test_private_signatures_are_the_ones_used() -> None:
    """The overridden methods take what pneumo-exp's overrides take."""
    assert list(inspect.signature(kt.Oracle._random_values).parameters) == ["self"]
    assert list(inspect.signature(kt.Oracle._save_trial).parameters) == ["self", "trial"]
    assert list(inspect.signature(kt.Oracle._duplicate).parameters) == ["self", "values"]
    assert list(inspect.signature(kt.Tuner._populate_initial_space).parameters) == ["self"]
