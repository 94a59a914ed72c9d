import keras
import keras_tuner as kt
import numpy as np
import pytest

from pneumo_exp.errors import ConfigError
from pneumo_exp.hypermodels import HYPERMODELS
from pneumo_exp.hypermodels.aug_cnn import AugCNN


def _layers(model: keras.Model, kind: type) -> list:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Sequential):
            found += [sub for sub in layer.layers if isinstance(sub, kind)]
        elif isinstance(layer, kind):
            found.append(layer)
    return found


def test_default_point_is_the_study_model() -> None:
    hp = kt.HyperParameters()
    model = AugCNN((64, 64, 1)).build(hp)
    convs = _layers(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [32, 32, 64]
    assert [c.kernel_size for c in convs] == [(3, 3), (4, 4), (3, 3)]
    assert len(_layers(model, keras.layers.MaxPooling2D)) == 3
    dense = _layers(model, keras.layers.Dense)
    assert [d.units for d in dense] == [64, 1]
    assert dense[-1].activation.__name__ == "sigmoid"
    assert not _layers(model, keras.layers.Dropout)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    assert _layers(model, keras.layers.RandomRotation)[0].factor == pytest.approx(
        (-15 / 360, 15 / 360))
    assert _layers(model, keras.layers.RandomZoom)[0].height_factor == 0.2
    assert _layers(model, keras.layers.RandomTranslation)[0].width_factor == 0.2
    assert _layers(model, keras.layers.RandomFlip)[0].mode == "horizontal"
    assert _layers(model, keras.layers.RandomBrightness)
    assert _layers(model, keras.layers.Rescaling)  # scaling lives in the model
    assert hp.values["class_weight"] == "none"
    assert model.output_shape == (None, 1)


def test_augmentation_is_inactive_at_inference() -> None:
    model = AugCNN((32, 32, 1)).build(kt.HyperParameters())
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))
    augment = model.get_layer("augmentation")
    scaled = x / 255.0
    np.testing.assert_allclose(augment(scaled, training=False), scaled)
    assert not np.allclose(augment(scaled, training=True), scaled)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_points_build_and_train_a_step(seed: int) -> None:
    hm = AugCNN((32, 32, 1), class_weight={0: 2.0, 1: 0.7}, seed=seed)
    hp = kt.HyperParameters()
    hm.build(hp)  # declare the space
    space = hp.copy()
    values = {}
    rng = np.random.default_rng(seed)
    for p in space.space:
        values[p.name] = p.random_sample(int(rng.integers(1 << 30)))
    point = kt.HyperParameters()
    for name, value in values.items():
        point.Fixed(name, value)
    model = hm.build(point)
    x = rng.integers(0, 255, (8, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (8, 1)).astype("float32")
    history = hm.fit(point, model, x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert set(history.history) >= {"loss", "accuracy", "auc"}
    prob = model.predict(x, verbose=0)
    assert prob.shape == (8, 1) and ((prob >= 0) & (prob <= 1)).all()


def test_space_overrides() -> None:
    hp = kt.HyperParameters()
    AugCNN((32, 32, 1), space={"dense_units": 128, "optimizer": ["adam", "sgd"],
                               "dropout": {"min": 0.2, "max": 0.4, "step": 0.1}}).build(hp)
    by_name = {p.name: p for p in hp.space}
    assert isinstance(by_name["dense_units"], kt.engine.hyperparameters.Fixed)
    assert hp.values["dense_units"] == 128
    assert by_name["optimizer"].values == ["adam", "sgd"]
    assert (by_name["dropout"].min_value, by_name["dropout"].max_value) == (0.2, 0.4)


def test_bad_space_entry_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"space\.dropout"):
        AugCNN((32, 32, 1), space={"dropout": {"low": 0.1}}).build(kt.HyperParameters())


def test_fixed_facts_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 32px"):
        AugCNN((16, 16, 1))
    with pytest.raises(ValueError, match="input_shape"):
        AugCNN((32, 32, 2))
    with pytest.raises(TypeError, match="unknown model option"):
        AugCNN((32, 32, 1), depth=3)


def test_diverging_training_fails_the_trial() -> None:
    hm = AugCNN((32, 32, 1), space={"learning_rate": 1e30, "optimizer": "sgd"})
    hp = kt.HyperParameters()
    model = hm.build(hp)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (16, 1)).astype("float32")
    with pytest.raises(kt.errors.FailedTrialError, match="diverged"):
        hm.fit(hp, model, x, y, epochs=3, batch_size=8, verbose=0,
               callbacks=[keras.callbacks.TerminateOnNaN()])


def test_registry_names() -> None:
    assert "aug_cnn" in HYPERMODELS
