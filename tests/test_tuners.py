"""The oracles and the stopping rules: given points first, the Gaussian process within the
configured initial points, one exact objective, constant output and the median rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import pytest
from conftest import OVERRIDES
from sklearn.metrics import roc_auc_score

from pneumo_exp.config import load_config
from pneumo_exp.search.callbacks import MedianStopping, ValidationFigures, trial_status
from pneumo_exp.search.tuners import BayesianOptimizationOracle


class Quadratic(kt.Tuner):
    """A tuner that trains nothing: the score of x is -(x - 0.3)^2."""

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict:
        x = trial.hyperparameters.Float("x", 0.0, 1.0, default=0.9)
        return {"score": -(x - 0.3) ** 2}


def test_gaussian_process_proposes_right_after_the_initial_points(tmp_path: Path) -> None:
    oracle = BayesianOptimizationOracle(kt.Objective("score", "max"), max_trials=6,
                                        num_initial_points=3, seed=1)
    oracle.given_points = [{}, {"x": 0.5}]  # the default point, then a given one
    fits: list[int] = []
    fit = oracle.gpr.fit

    def counting_fit(x: np.ndarray, y: np.ndarray) -> Any:
        fits.append(len(y))
        return fit(x, y)

    oracle.gpr.fit = counting_fit
    tuner = Quadratic(oracle=oracle, directory=str(tmp_path), project_name="q")
    tuner.search(verbose=0)
    trials = [oracle.trials[k] for k in sorted(oracle.trials)]
    assert [t.hyperparameters.values["x"] for t in trials[:2]] == [0.9, 0.5]
    # trials 0-2 are the given points and one random draw; from trial 3 on, the process
    assert fits[0] == 3 and len(fits) == 3


def test_no_draw_repeats_a_tried_point(tmp_path: Path) -> None:
    """A Gaussian process that keeps proposing the optimum, and random draws, never give a
    point within 5% of a tried one: each trial is a new configuration."""
    from pneumo_exp.search.kt_internals import distinct

    space = [kt.engine.hyperparameters.Float("x", 0.0, 1.0),
             kt.engine.hyperparameters.Choice("c", [1, 2])]
    assert not distinct({"x": 0.300, "c": 1}, {"x": 0.310, "c": 1}, space)  # 3.2%
    assert distinct({"x": 0.300, "c": 1}, {"x": 0.330, "c": 1}, space)  # 9%
    assert distinct({"x": 0.300, "c": 1}, {"x": 0.300, "c": 2}, space)
    stepped = [kt.engine.hyperparameters.Float("z", 0.1, 0.3, step=0.05)]  # a draw's float
    assert not distinct({"z": 0.15}, {"z": 0.1 + 0.05}, stepped)  # 0.15000000000000002
    assert distinct({"z": 0.15}, {"z": 0.2}, stepped)
    oracle = BayesianOptimizationOracle(kt.Objective("score", "max"), max_trials=12,
                                        num_initial_points=3, seed=1)
    oracle.given_points = [{}, {"x": 0.91}]  # the default 0.9, then no new point
    tuner = Quadratic(oracle=oracle, directory=str(tmp_path), project_name="q")
    tuner.search(verbose=0)
    values = [t.hyperparameters.values for t in oracle.trials.values()]
    assert len(values) == 12 and values[0]["x"] == 0.9 and values[1]["x"] != 0.91
    one = kt.engine.hyperparameters.Float("x", 0.0, 1.0)
    assert all(distinct(a, b, [one]) for i, a in enumerate(values) for b in values[:i])


class Bumpy(kt.Tuner):
    """A tuner that trains nothing: a score with several optima over two floats and an
    integer, where a Gaussian process's proposals depend on every digit of its fit."""

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict:
        hp = trial.hyperparameters
        x, y = hp.Float("x", 0.0, 1.0, default=0.9), hp.Float("y", 0.0, 1.0, default=0.1)
        z = hp.Int("z", 1, 8, default=3)
        return {"score": float(np.sin(13 * x) * np.cos(11 * y) + 0.1 * z)}


def _bumpy_search(directory: Path, max_trials: int) -> list[dict[str, Any]]:
    """The points a seeded Bayesian search in `directory` has tried, in order; a search
    already there resumes."""
    oracle = BayesianOptimizationOracle(kt.Objective("score", "max"), max_trials=max_trials,
                                        num_initial_points=2, seed=3)
    oracle.given_points = [{}]  # the default point first, as a search's
    Bumpy(oracle=oracle, directory=str(directory), project_name="b").search(verbose=0)
    return [oracle.trials[i].hyperparameters.values for i in oracle.start_order]


def test_a_resumed_bayesian_search_proposes_what_an_uninterrupted_one_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after 4 trials of 9 and resumed, with the filesystem listing the trials'
    files backwards: the Gaussian process is fitted to the trials in the order they ran and
    its random starts go on where they were, so the last five points are the uncut ones."""
    import tensorflow as tf  # Keras Tuner lists the trials' files with tf.io.gfile.glob

    uncut = _bumpy_search(tmp_path / "uncut", 9)
    assert _bumpy_search(tmp_path / "cut", 4) == uncut[:4]
    listed = tf.io.gfile.glob
    monkeypatch.setattr(tf.io.gfile, "glob",
                        lambda pattern: sorted(listed(pattern), reverse=True))
    resumed = _bumpy_search(tmp_path / "cut", 9)
    assert len(resumed) == 9 and resumed == uncut


def test_a_search_saved_without_its_random_starts_still_resumes(tmp_path: Path) -> None:
    """An oracle state written before the random starts were saved: the search resumes to
    its planned trials, first proposals from the seed again, as it always did."""
    import json

    _bumpy_search(tmp_path, 4)
    state_file = tmp_path / "b" / "oracle.json"
    state = json.loads(state_file.read_text())
    del state["random_starts"]
    state_file.write_text(json.dumps(state))
    resumed = _bumpy_search(tmp_path, 9)
    assert len(resumed) == 9
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in resumed)


class Probabilities(keras.Model):
    """A 'model' that answers the probability it is given, to test figures exactly."""

    def call(self, x: Any) -> Any:
        return x


def test_validation_figures_are_exact_where_keras_estimates() -> None:
    """Probabilities closer together than Keras' 200 thresholds: Keras' AUC sees a tie,
    the logged val_auc is scikit-learn's exact figure."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.5000, 0.5001, 0.5003, 0.5002, 0.5004, 0.5005]).reshape(-1, 1)
    callback = ValidationFigures(prob.astype(np.float32), labels)
    callback.set_model(Probabilities())
    logs: dict[str, float] = {}
    callback.on_epoch_end(0, logs)
    exact = roc_auc_score(labels, prob.ravel())
    keras_auc = keras.metrics.AUC()
    keras_auc.update_state(labels, prob.ravel())
    assert logs["val_auc"] == pytest.approx(exact) and exact != pytest.approx(
        float(keras_auc.result()), abs=0.05)
    assert logs["val_spread"] == pytest.approx(0.0005, abs=1e-6)


def test_constant_output_stops_after_the_configured_epochs() -> None:
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")(
        keras.layers.Rescaling(0.0)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)
    y = np.array([0, 1] * 8)
    history = model.fit(x, y, epochs=6, verbose=0,
                        callbacks=[ValidationFigures(x, y, constant_epochs=2)])
    assert len(history.epoch) == 2
    status = trial_status(history.history, planned_epochs=6, constant_epochs=2,
                          below_median_at=None, out_of_time=False)
    assert status == "constant output (stopped after 2 epochs)"


def test_median_rule_stops_a_trial_below_the_earlier_ones() -> None:
    earlier = [[0.80, 0.90, 0.95, 0.96], [0.85, 0.92, 0.94], [0.70, 0.80, 0.85, 0.90]]
    rule = MedianStopping("val_auc", "max", earlier, min_epochs=2)
    assert rule.median_at(1) == pytest.approx(0.90)
    assert rule.median_at(3) == pytest.approx(0.94)  # the short trial counts with its best
    rule.set_model(keras.Sequential())
    rule.model.stop_training = False
    rule.on_epoch_end(0, {"val_auc": 0.50})  # before min_epochs: never stops
    assert not rule.model.stop_training
    rule.on_epoch_end(1, {"val_auc": 0.91})  # best 0.91 >= median 0.90: goes on
    assert not rule.model.stop_training
    rule.on_epoch_end(2, {"val_auc": 0.92})  # best 0.92 < median 0.94
    assert rule.model.stop_training and rule.stopped_at == 2
    first = MedianStopping("val_auc", "max", [], min_epochs=1)
    first.set_model(keras.Sequential())
    first.model.stop_training = False
    first.on_epoch_end(3, {"val_auc": 0.1})  # no earlier trial: nothing to compare with
    assert not first.model.stop_training


@pytest.mark.slow
def test_a_collapsed_trial_is_stopped_and_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial whose network answers the same for every image stops after 2 epochs of the 5
    and its run says why; the search goes on to the next trial."""
    from conftest import make_folder_dataset

    from pneumo_exp import hypermodels
    from pneumo_exp.hypermodels.cnn import AugCNN
    from pneumo_exp.search.run import run_search

    monkeypatch.chdir(tmp_path)
    data = make_folder_dataset(tmp_path / "data")
    cfg = load_config("aug_cnn", {**OVERRIDES, "data.root": str(data), "train.epochs": 5,
                                  "train.patience": 5})
    first_rate = cfg.search.initial_points[0]["learning_rate"]  # trial 0, the given point

    class Collapsing(AugCNN):
        def build(self, hp: kt.HyperParameters) -> keras.Model:
            model = super().build(hp)
            if hp.values.get("learning_rate") == first_rate:  # the first trial: it collapses
                head = model.get_layer("pneumonia")
                head.kernel.assign(np.zeros(head.kernel.shape))
                model.optimizer.learning_rate.assign(0.0)
            return model

    monkeypatch.setitem(hypermodels.HYPERMODELS, "aug_cnn", Collapsing)
    result = run_search(cfg, verbose=0)
    by_trial = {row["trial"]: row for row in result.table}
    assert by_trial["0"]["status"] == "constant output (stopped after 2 epochs)"
    assert by_trial["0"]["epochs"] == 2
    assert by_trial["1"]["epochs"] >= 3 and not by_trial["1"]["status"].startswith("constant")


def test_the_default_second_trial_is_a_new_configuration(tmp_path: Path) -> None:
    """At seed 42 the first random draw of aug_cnn's space is, but for 2% of the learning
    rate, the given point: it is drawn again, and a stepped float's rounding (zoom
    0.15000000000000002) does not make it new."""
    from pneumo_exp.hypermodels import build_hypermodel
    from pneumo_exp.search.kt_internals import distinct
    from pneumo_exp.search.tuners import given_points

    cfg = load_config("aug_cnn", {"search.seed": 42})
    oracle = BayesianOptimizationOracle(kt.Objective("score", "max"), max_trials=3,
                                        num_initial_points=3, seed=42)
    oracle.given_points = given_points(cfg)
    kt.Tuner(oracle=oracle, hypermodel=build_hypermodel(cfg, np.array([0, 1])),
             directory=str(tmp_path), project_name="q")
    first, second = (oracle.create_trial(f"t{i}").hyperparameters.values for i in range(2))
    assert first["learning_rate"] == cfg.search.initial_points[0]["learning_rate"]
    assert distinct(first, second, oracle.get_space().space)

    def rounded(values: dict[str, Any]) -> dict[str, Any]:  # as the count: 2 digits
        return {k: float(f"{v:.2g}") if isinstance(v, float) else v for k, v in values.items()}

    assert rounded(first) != rounded(second)


def test_validation_probabilities_are_keras_predicts() -> None:
    """The validation figures predict batch by batch without Keras' per-call set-up: the
    same probabilities, to the bit, as `predict` over the same batches."""
    from pneumo_exp.hypermodels.cnn import AugCNN
    from pneumo_exp.search.callbacks import predict_in_batches

    model = AugCNN((32, 32, 1), space={"batch_norm": True}).build(kt.HyperParameters())
    images = np.random.default_rng(0).integers(0, 255, (21, 32, 32, 1)).astype("uint8")
    expected = model.predict(images, batch_size=8, verbose=0).ravel()
    np.testing.assert_array_equal(predict_in_batches(model, images, 8), expected)
