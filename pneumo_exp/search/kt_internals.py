"""Every use of Keras Tuner's private API, in one place (written against keras-tuner 1.4.8).

Keras Tuner has no public hook for these, and each is small:

- `set_debug`: Keras Tuner prints a failed trial's traceback only in DEBUG mode.
- `AtomicStateOracle`: the oracle's and each trial's state files written whole or not at
  all (`save`, `_save_trial`, `_get_oracle_fname`, `_get_trial_dir`), so a kill -9
  mid-write does not leave a truncated JSON that breaks resuming.
- `GivenPointsFirst`: the first trials are given points (the study's configuration, then
  the configured initial points). `_random_values` is the draw every oracle's random phase
  makes (Hyperband's brackets included); `_tried_so_far` counts the distinct points drawn
  and `_duplicate` tells a point already tried.
- `TunerMixin`: the tuner's state file written atomically too (`_get_tuner_fname`); Keras
  Tuner builds the model once per conditional branch to find every hyperparameter
  (`_populate_initial_space`), and a branch that does not fit the image must not stop the
  search; which process of a distributed search this is (`_is_worker`).

`PRIVATE_API` lists them; tests/test_kt_internals.py fails when a Keras Tuner release
removes or renames one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras_tuner as kt
from keras_tuner.src import config as kt_config

from pneumo_exp.fileio import write_text_atomic

PRIVATE_API: dict[type, tuple[str, ...]] = {
    kt.Oracle: ("_save_trial", "_get_oracle_fname", "_get_trial_dir", "_random_values",
                "_duplicate"),
    kt.Tuner: ("_populate_initial_space", "_get_tuner_fname", "_is_worker"),
}
PRIVATE_ATTRIBUTES = {kt.Oracle: ("_tried_so_far",)}  # set in __init__
PRIVATE_MODULES = {kt_config: ("DEBUG",)}


def set_debug(enabled: bool) -> None:
    """Whether Keras Tuner prints the traceback of a failed trial."""
    kt_config.DEBUG = enabled


def _write_state(path: str, state: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(state))


class AtomicStateOracle:
    """Oracle mixin: state files written atomically."""

    def save(self) -> None:
        _write_state(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial: kt.engine.trial.Trial) -> None:
        _write_state(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                     trial.get_state())


def allows(hp: kt.engine.hyperparameters.HyperParameter, value: Any) -> bool:
    """Whether `value` lies in the range of `hp` (a narrowed space may exclude it)."""
    if isinstance(hp, kt.engine.hyperparameters.Fixed):
        return value == hp.value
    if isinstance(hp, kt.engine.hyperparameters.Boolean):
        return isinstance(value, bool)
    if isinstance(hp, kt.engine.hyperparameters.Choice):
        return value in hp.values
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and hp.min_value <= value <= hp.max_value)


class GivenPointsFirst(AtomicStateOracle):
    """Oracle mixin: the first points drawn are `given_points` ({hyperparameter: value}
    over the space's defaults; {} is the default point, the study's configuration); then
    the oracle's own draws."""

    given_points: Sequence[Mapping[str, Any]] = ()

    def _random_values(self) -> dict[str, Any] | None:
        drawn = len(self._tried_so_far)
        if drawn >= len(self.given_points):
            return super()._random_values()
        point = self.given_points[drawn]
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                value = point.get(hp.name, hp.default)
                hps.values[hp.name] = value if allows(hp, value) else hp.default
        if self._duplicate(hps.values):  # the space no longer tells it from a tried point
            return super()._random_values()
        return hps.values


class TunerMixin:
    """Tuner mixin: atomic state files, and a space population that tolerates branches
    that do not fit (the hypermodel raises FailedTrialError for them)."""

    def save(self) -> None:
        if not self._is_worker():
            self.oracle.save()
        _write_state(self._get_tuner_fname(), self.get_state())

    def _populate_initial_space(self) -> None:
        build = self.hypermodel.build

        def declaring_build(hp: kt.HyperParameters) -> Any:
            try:
                return build(hp)
            except kt.errors.FailedTrialError:  # declared its hyperparameters, then failed
                return None

        self.hypermodel.build = declaring_build
        try:
            super()._populate_initial_space()
        finally:
            self.hypermodel.build = build

    def is_worker(self) -> bool:
        """A worker of a distributed search (it trains; the chief's oracle decides)."""
        return bool(self._is_worker())
