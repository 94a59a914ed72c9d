"""Every use of Keras Tuner's private API, in one place (written against keras-tuner 1.4.8).

Keras Tuner has no public hook for these. `PRIVATE_API` lists them; tests/test_kt_internals.py
fails when a Keras Tuner release removes or renames one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import keras_tuner as kt
import numpy as np
from keras_tuner.src import config as kt_config
from keras_tuner.src.distribute.oracle_client import OracleClient

from pneumo_exp.fileio import write_text_atomic

log = logging.getLogger(__name__)

PRIVATE_API: dict[type, tuple[str, ...]] = {
    kt.Oracle: ("_save_trial", "_get_oracle_fname", "_get_trial_dir", "_random_values",
                "_duplicate", "reload"),
    kt.Tuner: ("_populate_initial_space", "_get_tuner_fname", "_is_worker"),
    OracleClient: ("create_trial", "update_trial", "end_trial", "get_trial", "get_space",
                   "update_space", "get_best_trials"),
}
PRIVATE_ATTRIBUTES = {kt.Oracle: ("_tried_so_far", "ongoing_trials", "_retry_queue"),
                      kt.oracles.BayesianOptimizationOracle: ("_random_state",)}
PRIVATE_MODULES = {kt_config: ("DEBUG",)}


def set_debug(enabled: bool) -> None:
    """Whether Keras Tuner prints the traceback of a failed trial."""
    kt_config.DEBUG = enabled


class AtomicStateOracle:
    """Oracle mixin: state files written whole or not at all (a kill -9 mid-write leaves no
    truncated JSON that breaks resuming), and trials kept assigned across a restart."""

    def save(self) -> None:
        write_text_atomic(self._get_oracle_fname(), json.dumps(self.get_state()))

    def reload(self) -> None:
        """The trials in the order they started (Keras Tuner reads them in the order the
        filesystem lists them, and a Gaussian process fitted to its rows in another order
        proposes other points). A trial running when the oracle stopped stays with the
        process it was given to (Keras Tuner would hand it to whichever asks first), which
        ends it, or gets it back when it restarts under its id: a distributed search's chief
        may stop mid-trial."""
        super().reload()
        started = [i for i in self.start_order if i in self.trials]
        self.trials = {**{i: self.trials[i] for i in started}, **self.trials}
        with open(self._get_oracle_fname()) as f:
            ongoing = json.load(f).get("ongoing_trials", {})
        for tuner_id, trial_id in ongoing.items():
            trial = self.trials.get(trial_id)
            if trial_id in self._retry_queue:
                self._retry_queue.remove(trial_id)
            # Keras Tuner saves an ended trial before it forgets it was running: an oracle
            # stopped between the two lists it as running, its trial file says it ended
            if trial is not None and trial.status == "RUNNING":
                self.ongoing_trials[tuner_id] = trial

    def _save_trial(self, trial: kt.engine.trial.Trial) -> None:
        write_text_atomic(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                          json.dumps(trial.get_state()))


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


DISTINCT = 0.05  # a continuous value must differ by more than this share to be new


def distinct(a: Mapping[str, Any], b: Mapping[str, Any],
             space: Sequence[kt.engine.hyperparameters.HyperParameter]) -> bool:
    """Whether two points differ in a categorical or discrete value, or in a continuous one
    (a float without a step) by more than DISTINCT of its value. A stepped float is compared
    by its step, so 0.15 and a draw's 0.15000000000000002 are one value."""
    floats = {hp.name: hp.step for hp in space if isinstance(hp, kt.engine.hyperparameters.Float)}
    for name in set(a) | set(b):
        x, y = a.get(name), b.get(name)
        if name in floats and x is not None and y is not None:
            step = floats[name]
            if abs(x - y) > (step / 2 if step else DISTINCT * max(abs(x), abs(y))):
                return True
        elif x != y:
            return True
    return False


class GivenPointsFirst(AtomicStateOracle):
    """Oracle mixin: the first points drawn are `given_points` ({hyperparameter: value}
    over the space's defaults; {} is the default point, the study's configuration); then
    the oracle's own draws. No draw repeats a tried point: one that is not `distinct` from
    every trial so far is drawn again (`_duplicate`)."""

    given_points: Sequence[Mapping[str, Any]] = ()

    def _duplicate(self, values: Mapping[str, Any]) -> bool:
        space = self.hyperparameters.space
        tried = [{k: v for k, v in t.hyperparameters.values.items()
                  if not k.startswith("tuner/")} for t in self.trials.values()]
        mine = {k: v for k, v in values.items() if not k.startswith("tuner/")}
        return super()._duplicate(values) or any(not distinct(mine, t, space) for t in tried)

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


class ResumedRandomStarts:
    """Bayesian oracle mixin: its state holds where the Gaussian process's random starts
    are (`_random_state`, left out of Keras Tuner's), so a resumed search proposes what an
    uninterrupted one does rather than drawing them from the seed again."""

    def get_state(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = self._random_state.get_state()
        return {**super().get_state(),
                "random_starts": [kind, keys.tolist(), pos, has_gauss, cached]}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if "random_starts" in state:  # absent in the state of an older search
            kind, keys, pos, has_gauss, cached = state["random_starts"]
            self._random_state.set_state((kind, np.array(keys, dtype=np.uint32), pos,
                                          has_gauss, cached))


class TunerMixin:
    """Tuner mixin: atomic state files, and a space population that tolerates branches
    that do not fit (the hypermodel raises FailedTrialError for them)."""

    def save(self) -> None:
        if not self._is_worker():
            self.oracle.save()
        write_text_atomic(self._get_tuner_fname(), json.dumps(self.get_state()))

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

    def wait_out_chief_restarts(self) -> None:
        """A worker's oracle client made patient (PatientOracleClient)."""
        if isinstance(self.oracle, OracleClient):
            self.oracle = PatientOracleClient(self.oracle)


class PatientOracleClient:
    """A worker's link to the chief's oracle that outlives a chief restart: a call the
    chief's death cut (gRPC UNAVAILABLE) is made again every few seconds, for up to
    `patience` s; the restarted chief's saved state keeps the worker's trial its own."""

    RPCS = PRIVATE_API[OracleClient]

    def __init__(self, client: OracleClient, patience: float = 900.0) -> None:
        self._client, self._patience = client, patience

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.RPCS:
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            deadline = time.time() + self._patience
            while True:
                try:
                    return attr(*args, **kwargs)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                        raise
                    log.warning("the chief's oracle is not answering (%s); asking again.",
                                name)
                    time.sleep(3)
        return patient
