import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from pneumo_exp.errors import ConfigError
from pneumo_exp.hypermodels import HYPERMODELS, StudyHyperModel
from pneumo_exp.hypermodels.cnn import AugCNN


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
    zoom = _layers(model, keras.layers.RandomZoom)[0]
    assert zoom.height_factor == 0.2 and zoom.width_factor is None  # the aspect ratio is kept
    assert not _layers(model, keras.layers.RandomGaussianBlur)
    assert not _layers(model, keras.layers.RandomContrast)
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


def _random_point(hm: StudyHyperModel, seed: int) -> kt.HyperParameters:
    space = kt.HyperParameters()
    hm.build(space)  # declares the space
    rng = np.random.default_rng(seed)
    point = kt.HyperParameters()
    for p in space.space:
        point.Fixed(p.name, p.random_sample(int(rng.integers(1 << 30))))
    return point


def _kwargs(arch: str) -> dict:
    from conftest import tiny_base

    if arch == "site":
        return {"base_models": [tiny_base(32)]}
    return {"weights": None} if arch == "transfer" else {}


@pytest.mark.parametrize("arch", sorted(HYPERMODELS))
def test_builds_from_empty_hyperparameters(arch: str) -> None:
    hp = kt.HyperParameters()
    model = HYPERMODELS[arch]((32, 32, 1), **_kwargs(arch)).build(hp)
    assert model.output_shape == (None, 1)
    assert model.name == arch
    assert hp.values["class_weight"] == "none" and "learning_rate" in hp.values


@pytest.mark.parametrize("arch", sorted(HYPERMODELS))
@pytest.mark.parametrize("seed", [1, 2])
def test_random_points_build_and_train_a_step(arch: str, seed: int) -> None:
    # transfer: every base and the fine-tuning phase are tested elsewhere; keep this one fast
    space = {"base": "mobilenet_v3_small", "fine_tune_layers": 0} if arch == "transfer" else None
    hm = HYPERMODELS[arch]((32, 32, 1), class_weight={0: 2.0, 1: 0.7}, seed=seed, space=space,
                           **_kwargs(arch))
    # A conv stack too deep for 32px fails its trial (tested below); draw until one fits.
    for draw in range(seed, seed + 50, 7):
        point = _random_point(hm, draw)
        try:
            model = hm.build(point)
            break
        except kt.errors.FailedTrialError:
            assert arch in ("cnn", "aug_cnn")
    else:
        pytest.fail(f"no random point of {arch} fits 32px images")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (8, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (8, 1)).astype("float32")
    history = hm.fit(point, model, x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
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


def test_weight_decay_shrinks_the_kernels_only_where_the_space_names_it() -> None:
    hp = kt.HyperParameters()
    AugCNN((32, 32, 1)).build(hp)
    assert "weight_decay" not in {p.name for p in hp.space}  # other spaces keep their draws

    hp = kt.HyperParameters()
    space = {"batch_norm": True, "head": "global_avg",
             "weight_decay": {"min": 0.01, "max": 1.0, "sampling": "log"}}
    model = AugCNN((32, 32, 1), space=space).build(hp)
    (decay,) = [p for p in hp.space if p.name == "weight_decay"]
    assert (decay.min_value, decay.max_value, decay.sampling) == (0.01, 1.0, "log")
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    # Adam moves nothing on zero gradients: what changes is the decay alone
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    rate = float(optimizer.learning_rate.numpy()) * hp.values["weight_decay"]
    for v, old in zip(model.trainable_variables, before, strict=True):
        if v.name in ("gamma", "beta", "bias"):
            np.testing.assert_array_equal(v.numpy(), old)
        else:
            np.testing.assert_allclose(v.numpy(), old * (1 - rate), rtol=1e-5)
    assert {v.name for v in model.trainable_variables} >= {"kernel", "gamma", "beta", "bias"}

    # a layer's name holds no sway: Keras matches its exclusion pattern on layer/variable
    from pneumo_exp.hypermodels.base import Training, compile_binary
    inputs = keras.Input((4,))
    named = keras.Model(inputs, keras.layers.Dense(1, name="debias_beta")(inputs))
    compile_binary(named, Training("adam", 0.1, 0.0, weight_decay=0.5))
    named.optimizer.build(named.trainable_variables)
    kernel, bias = named.layers[-1].kernel, named.layers[-1].bias
    kernel.assign(np.ones((4, 1)))
    bias.assign(np.ones(1))
    named.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in (kernel, bias)])
    np.testing.assert_allclose(kernel.numpy(), 0.95)
    np.testing.assert_array_equal(bias.numpy(), 1.0)

    # a trial rebuilt from its values (cv --from best) decays without the space naming it
    hp = kt.HyperParameters()
    hp.Fixed("weight_decay", 0.3)
    assert AugCNN((32, 32, 1)).build(hp).optimizer.weight_decay == pytest.approx(0.3)

    with pytest.raises(ConfigError, match=r"space\.weight_decay.*1\.0e-4"):
        AugCNN((32, 32, 1), space={"weight_decay": "1e-4"}).build(kt.HyperParameters())
    with pytest.raises(ConfigError, match=r"space\.mixup"):
        AugCNN((32, 32, 1), space={"mixup": -0.2}).build(kt.HyperParameters())


def test_mixup_blends_images_and_labels_alike_and_follows_the_seed() -> None:
    import tensorflow as tf

    from pneumo_exp.hypermodels.base import mixed_up

    labels = np.array([0, 1] * 16, dtype="float32").reshape(-1, 1)
    images = np.broadcast_to(labels[:, :, None, None] * 255, (32, 8, 8, 1)).astype("uint8")
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)

    def blends() -> list[tuple[np.ndarray, np.ndarray]]:
        keras.utils.set_random_seed(3)
        return [(x.numpy(), y.numpy(), w.numpy())
                for x, y, w in mixed_up(batches, 1.0, {0: 3.0, 1: 0.6})]

    first = blends()
    for x, y, w in first:  # an image that is 255 x its label stays so, blended
        np.testing.assert_allclose(x[:, 0, 0, 0] / 255, y[:, 0], atol=1e-5)
        np.testing.assert_allclose(w, 3.0 - 2.4 * y[:, 0], rtol=1e-5)  # class weights too
    assert any(((y > 0) & (y < 1)).any() for _, y, _ in first)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, blends(), strict=True))

    hm = AugCNN((32, 32, 1), space={"mixup": 0.4})
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert hp.values["mixup"] == pytest.approx(0.4)
    with pytest.raises(kt.errors.FailedTrialError, match=r"tf\.data"):
        hm.fit(hp, model, np.zeros((4, 32, 32, 1), "uint8"), np.zeros((4, 1)), verbose=0)


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
    keras.utils.set_random_seed(0)  # unseeded, an update may leave every ReLU dead, not NaN
    hm = AugCNN((32, 32, 1), space={"learning_rate": 1e30, "optimizer": "sgd"})
    hp = kt.HyperParameters()
    model = hm.build(hp)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (16, 1)).astype("float32")
    with pytest.raises(kt.errors.FailedTrialError, match="diverged"):
        hm.fit(hp, model, x, y, epochs=3, batch_size=8, verbose=0,
               callbacks=[keras.callbacks.TerminateOnNaN()])


def test_registry_names_match_experiment_files() -> None:
    from pneumo_exp.config import architectures
    assert sorted(HYPERMODELS) == architectures() == sorted(
        ["aug_cnn", "baseline", "cnn", "regularized", "transfer", "site"])


def test_baseline_default_point_is_the_study_model() -> None:
    from pneumo_exp.hypermodels.baseline import Baseline
    model = Baseline((64, 64, 3)).build(kt.HyperParameters())
    assert model.input_shape == (None, 64, 64, 3)
    assert _layers(model, keras.layers.Flatten)
    assert [d.units for d in _layers(model, keras.layers.Dense)] == [32, 8, 1]
    assert all(d.kernel_regularizer is None for d in _layers(model, keras.layers.Dense))
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)


def test_regularized_adds_l2_on_the_first_dense_layer() -> None:
    from pneumo_exp.hypermodels.baseline import Regularized
    hp = kt.HyperParameters()
    model = Regularized((64, 64, 3)).build(hp)
    first, second, _ = _layers(model, keras.layers.Dense)
    assert first.kernel_regularizer.l2 == pytest.approx(0.01)
    assert second.kernel_regularizer is None
    (l2,) = [p for p in hp.space if p.name == "l2"]
    assert (l2.min_value, l2.max_value, l2.sampling) == (1e-4, 1e-1, "log")


def test_cnn_default_point_has_no_augmentation() -> None:
    from pneumo_exp.hypermodels.cnn import CNN
    model = CNN((64, 64, 1)).build(kt.HyperParameters())
    assert [c.kernel_size for c in _layers(model, keras.layers.Conv2D)] == [(3, 3), (4, 4),
                                                                           (3, 3)]
    assert not _layers(model, keras.layers.BatchNormalization)
    assert not _layers(model, keras.layers.RandomRotation)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)


def test_cnn_stack_too_deep_for_the_image_fails_the_trial() -> None:
    from pneumo_exp.hypermodels.cnn import CNN
    hp = kt.HyperParameters()
    hp.Fixed("conv_blocks", 4)
    for i in range(1, 5):
        hp.Fixed(f"kernel_{i}", 5)
    with pytest.raises(kt.errors.FailedTrialError, match="do not fit 32px"):
        CNN((32, 32, 1)).build(hp)


def test_transfer_default_point_is_the_study_model() -> None:
    from pneumo_exp.hypermodels.transfer import Transfer, base_network
    hp = kt.HyperParameters()
    model = Transfer((32, 32, 1), weights=None).build(hp)
    base = base_network(model)
    assert base.name.startswith("resnet50")
    assert base.trainable  # no pretrained weights: the base trains with the head
    assert _layers(model, keras.layers.Flatten)
    assert [d.units for d in _layers(model, keras.layers.Dense)] == [256, 1]
    assert hp.values["fine_tune_layers"] == 0
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)


@pytest.mark.parametrize("base", ["resnet50", "mobilenet_v2", "densenet121",
                                  "efficientnet_b0", "mobilenet_v3_small"])
def test_transfer_preprocessing_equals_keras_preprocess_input(base: str) -> None:
    from pneumo_exp.hypermodels.transfer import BASES, preprocess
    modules = {"resnet50": keras.applications.resnet50,
               "mobilenet_v2": keras.applications.mobilenet_v2,
               "densenet121": keras.applications.densenet,
               "efficientnet_b0": keras.applications.efficientnet,
               "mobilenet_v3_small": keras.applications.mobilenet_v3}
    inputs = keras.Input((8, 8, 3))
    layer_model = keras.Model(inputs, preprocess(inputs, BASES[base][1]))
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = modules[base].preprocess_input(x.copy())
    np.testing.assert_allclose(layer_model(x), expected, rtol=1e-5, atol=1e-3)


def test_transfer_loads_a_local_weights_file(tmp_path) -> None:
    from pneumo_exp.hypermodels.transfer import Transfer, base_network
    source = keras.applications.MobileNetV2(include_top=False, weights=None,
                                            input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(0, 0.1, w.shape).astype("float32")
                        for w in source.get_weights()])
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    source.save_weights(path)
    hp = kt.HyperParameters()
    hp.Fixed("base", "mobilenet_v2")
    model = Transfer((32, 32, 1), weights=str(path)).build(hp)
    base = base_network(model)
    assert not base.trainable  # pretrained: frozen
    for loaded, saved in zip(base.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def test_transfer_fine_tunes_the_top_layers_in_a_second_phase(tmp_path) -> None:
    from pneumo_exp.hypermodels.transfer import Transfer, base_network
    source = keras.applications.MobileNetV2(include_top=False, weights=None,
                                            input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    source.save_weights(path)
    hp = kt.HyperParameters()
    hp.Fixed("base", "mobilenet_v2")
    hp.Fixed("fine_tune_layers", 20)
    hm = Transfer((32, 32, 1), weights=str(path))
    model = hm.build(hp)
    head_only = {id(w) for w in model.trainable_weights}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (8, 1)).astype("float32")
    history = hm.fit(hp, model, x, y, epochs=2, batch_size=4, verbose=0)
    assert history.epoch == [0, 1, 2]  # 2 epochs of head, then 1 of fine-tuning
    base = base_network(model)
    trainable = [layer for layer in base.layers if layer.trainable_weights]
    assert trainable and all(layer in base.layers[-20:] for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    tuned = [w for w in model.trainable_weights if id(w) not in head_only]
    top = {id(w) for layer in base.layers[-20:] for w in layer.weights}
    assert tuned and all(id(w) in top for w in tuned)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)


def test_transfer_imagenet_offline_is_a_clear_fatal_error(monkeypatch) -> None:
    from pneumo_exp.hypermodels import transfer

    def offline(*args, **kwargs):
        if kwargs.get("weights") == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: None")
        return keras.applications.ResNet50(*args, **kwargs)

    monkeypatch.setitem(transfer.BASES, "resnet50", (offline, "caffe"))
    with pytest.raises(transfer.WeightsUnavailableError, match=r"model\.weights") as err:
        transfer.Transfer((32, 32, 1), weights="imagenet").build(kt.HyperParameters())
    assert isinstance(err.value, kt.errors.FatalError)
    # auto falls back to training from scratch, with the same advice as a warning
    model = transfer.Transfer((32, 32, 1), weights="auto").build(kt.HyperParameters())
    assert model.output_shape == (None, 1)


def test_transfer_weights_option_is_checked(tmp_path) -> None:
    from pneumo_exp.hypermodels.transfer import Transfer
    with pytest.raises(ValueError, match="is not a file"):
        Transfer((32, 32, 1), weights=str(tmp_path / "missing.h5"))


def test_standardize_normalizes_each_image_and_survives_saving(tmp_path) -> None:
    hp = kt.HyperParameters()
    hp.Fixed("intensity", "standardize")
    model = AugCNN((32, 32, 1)).build(hp)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (3, 32, 32, 1)).astype("float32")
    x[1] = x[1] * 0.3 + 100  # same image content at another exposure and contrast
    out = model.get_layer("standardize")(x / 255).numpy()
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-2)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_equalize_maps_any_tone_curve_to_one_image_and_survives_saving(tmp_path) -> None:
    hp = kt.HyperParameters()
    hp.Fixed("intensity", "equalize")
    model = AugCNN((32, 32, 1)).build(hp)
    assert model.inputs[0].name == "image"  # the graph starts at the input, not after it
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 32, 32, 1)).astype("float32")
    curved = np.round(255 * (x / 255) ** 1.8)  # another tone curve, same order of values
    eq = model.get_layer("equalize")
    assert np.abs(eq(x).numpy() - eq(curved).numpy()).mean() < 5  # of 255; rounding merges bins
    assert np.abs(x - curved).mean() > 30
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_crop_zooms_in_further_than_out() -> None:
    """A site that frames its chests tighter: crop zooms in up to half of each side cut away
    while zoom still bounds the zoom out."""
    hp = kt.HyperParameters()
    for name, value in (("aspect", True), ("zoom", 0.25), ("crop", 0.5)):
        hp.Fixed(name, value)
    zoom = _layers(AugCNN((32, 32, 1), seed=0).build(hp), keras.layers.RandomZoom)[0]
    assert zoom.height_factor == zoom.width_factor == (-0.5, 0.25)


def test_aspect_and_blur_augmentation() -> None:
    hp = kt.HyperParameters()
    hp.Fixed("aspect", True)
    hp.Fixed("zoom", 0.25)
    hp.Fixed("blur", 1.0)
    model = AugCNN((32, 32, 1), seed=0).build(hp)
    zoom = _layers(model, keras.layers.RandomZoom)[0]
    assert zoom.height_factor == zoom.width_factor == 0.25  # drawn independently
    (blur,) = _layers(model, keras.layers.RandomGaussianBlur)
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    assert np.abs(blur(x, training=True).numpy() - x).mean() > 0.05  # every image blurred
    np.testing.assert_array_equal(blur(x, training=False).numpy(), x)  # not at inference


def test_augmentation_layers_draw_independently() -> None:
    """Layers given one seed draw the same numbers: every zoom-in came with the same
    rotation. Each layer must have its own stream (and a seed still reproduces them)."""
    def draws(seed: int) -> tuple[np.ndarray, np.ndarray]:
        hp = kt.HyperParameters()
        hp.Fixed("zoom", 0.3)
        model = AugCNN((32, 32, 1), seed=seed).build(hp)
        (rotation,) = _layers(model, keras.layers.RandomRotation)
        (zoom,) = _layers(model, keras.layers.RandomZoom)
        x = np.zeros((16, 32, 32, 1), "float32")
        angle = np.ravel(rotation.get_random_transformation(x)["angle"])
        height = np.ravel(zoom.get_random_transformation(x)["height_zoom"])
        # both as the uniform numbers they were drawn from
        return (angle / 15 + 1) / 2, (height - 0.7) / 0.6

    u_rotation, u_zoom = draws(0)
    assert np.abs(u_rotation - u_zoom).max() > 0.1
    assert abs(np.corrcoef(u_rotation, u_zoom)[0, 1]) < 0.9
    np.testing.assert_allclose(draws(0)[0], u_rotation)  # reproducible from the seed


def _batch_normalized(seed: int) -> tuple[AugCNN, kt.HyperParameters, keras.Model]:
    keras.utils.set_random_seed(seed)
    hp = kt.HyperParameters()
    for name, value in (("batch_norm", True), ("conv_blocks", 2), ("head", "global_avg")):
        hp.Fixed(name, value)
    hm = AugCNN((32, 32, 1), seed=seed)
    return hm, hp, hm.build(hp)


def test_batch_norm_trains_through_the_fused_kernel_as_keras_does(tmp_path) -> None:
    """While a model fits, its BatchNormalization layers train through TensorFlow's fused
    kernel (hypermodels/fused.py): the weights and moving statistics it reaches are Keras'
    own to float rounding; a checkpoint written during the fit (Keras Tuner's best epoch)
    loads into a fresh build, and the model saved after is Keras' own, in safe mode."""
    from pneumo_exp.data.resample import one_resampling
    from pneumo_exp.hypermodels.fused import fused_call

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (16, 1)).astype("float32")
    calls: list[object] = []

    class Checkpoint(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.extend(getattr(layer.call, "func", None) for layer in self.model.layers
                         if isinstance(layer, keras.layers.BatchNormalization))

        def on_epoch_end(self, epoch, logs=None):
            self.model.save_weights(tmp_path / "best.weights.h5")

    hm, hp, fused = _batch_normalized(0)
    hm.fit(hp, fused, x, y, epochs=2, batch_size=8, verbose=0, callbacks=[Checkpoint()])
    assert calls and set(calls) == {fused_call}
    _, _, plain = _batch_normalized(0)
    with one_resampling(plain):  # augmented as the fit augments: only the kernel differs
        plain.fit(x, y, epochs=2, batch_size=8, verbose=0)  # Keras' own layer throughout
    assert len(fused.weights) == len(plain.weights)
    for a, b in zip(fused.weights, plain.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)
    _, _, reloaded = _batch_normalized(1)
    reloaded.load_weights(tmp_path / "best.weights.h5")
    for a, b in zip(fused.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert all("call" not in vars(layer) for layer in fused.layers)
    fused.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fused.predict(x, verbose=0),
                               rtol=1e-6)


def test_a_fit_traces_its_train_step_once() -> None:
    """The optimizer's slots exist before the train step is traced: created inside it,
    they make TensorFlow trace every trial's step twice (seconds per trial)."""
    hm, hp, model = _batch_normalized(0)
    traces: list[int] = []
    step = model.train_step

    def counted(data):
        traces.append(1)
        return step(data)

    model.train_step = counted
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 32, 32, 1)).astype("uint8")
    y = rng.integers(0, 2, (20, 1)).astype("float32")
    hm.fit(hp, model, x, y, epochs=2, batch_size=8, verbose=0)
    assert len(traces) == 1


def _geometric(seed: int, interpolation: str = "bilinear") -> keras.Sequential:
    """A contrast change, then rotation, shift and zoom (height and width apart), each layer
    with its own seed (the contrast first: it scales about the image's mean, which the
    filled borders would move)."""
    return keras.Sequential([
        keras.layers.RandomContrast(0.3, value_range=(0, 1), seed=seed + 3),
        keras.layers.RandomRotation(10 / 360, fill_mode="nearest", seed=seed,
                                    interpolation=interpolation),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1,
                                       interpolation=interpolation),
        keras.layers.RandomZoom((-0.3, 0.2), (-0.3, 0.2), fill_mode="nearest", seed=seed + 2,
                                interpolation=interpolation),
    ], name="augmentation")


def test_rotation_shift_and_zoom_train_as_one_resampling_of_the_same_draws() -> None:
    """Within `one_resampling`, a training batch goes through rotation, shift and zoom in
    one resampling (data/resample.py) with the draws Keras' layers make: on an image whose
    grey values are linear in x and y (which bilinear interpolation reproduces exactly),
    every pixel whose sample stays inside the image is what the three layers give one after
    the other, image by image; the traced call holds one ImageProjectiveTransformV3 where
    Keras' holds three, a Sequential model and one nested in another included. Inference is
    untouched, and the layers' calls are restored."""
    from pneumo_exp.data.resample import one_resampling, resampled_call

    yy, xx = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    images = np.repeat(((0.3 * xx + 0.7 * yy) / 64.0)[None, :, :, None], 8, axis=0)
    images = images.astype("float32")
    model = keras.Sequential([keras.Input((64, 64, 1)), _geometric(3)])
    keras_own = keras.Sequential([keras.Input((64, 64, 1)), _geometric(3)])
    once = []
    with one_resampling(model):
        assert model.layers[0].call.func is resampled_call
        for _ in range(3):  # each call draws anew, as each of Keras' calls does
            once.append(keras.ops.convert_to_numpy(model(images, training=True)))
    three = [keras.ops.convert_to_numpy(keras_own(images, training=True)) for _ in range(3)]
    assert "call" not in vars(model.layers[0])
    centre = (slice(None), slice(24, 40), slice(24, 40))  # inside after any of these draws
    for a, b in zip(once, three, strict=True):
        np.testing.assert_allclose(a[centre], b[centre], atol=2e-4)
        assert not np.allclose(a[0, 24:40, 24:40], a[1, 24:40, 24:40], atol=1e-2)  # by image
    assert not np.allclose(once[0][centre], once[1][centre], atol=1e-2)
    with one_resampling(model):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images, training=False)),
                                      images)

    def resamplings(net: keras.Model) -> int:
        graph = tf.function(lambda x: net(x, training=True)).get_concrete_function(
            tf.TensorSpec((None, 64, 64, 1))).graph
        return sum(op.type == "ImageProjectiveTransformV3" for op in graph.get_operations())

    assert resamplings(keras_own) == 3
    with one_resampling(model):
        assert resamplings(model) == 1
    # the model may itself be the Sequential, and hold another inside
    top = keras.Sequential([keras.Input((64, 64, 1)), *_geometric(5).layers, _geometric(9)])
    with one_resampling(top):
        assert resamplings(top) == 2


def test_a_trial_and_adaptation_resample_once_and_the_saved_model_is_keras_own(tmp_path) -> None:
    """The search's augmentation resamples once in a trial's fit and in adaptation's
    training-mode passes; the model saved after is Keras' own, loaded in safe mode."""
    from pneumo_exp.data import resample
    from pneumo_exp.serving.batch_norm import adapt_batch_norm

    hm = AugCNN((48, 48, 1), seed=0, space={"batch_norm": True, "head": "global_avg",
                                            "rotation": 5.0, "shift": 0.1, "zoom": 0.2})
    hp = kt.HyperParameters()
    model = hm.build(hp)
    seen: list[int] = []
    composed = resample.resample_once

    def counted(layers, images):
        seen.append(len(layers))
        return composed(layers, images)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 48, 48, 1)).astype("uint8")
    y = rng.integers(0, 2, (32, 1)).astype("float32")
    resample.resample_once = counted
    try:
        hm.fit(hp, model, x, y, epochs=1, batch_size=16, verbose=0)
        assert seen and set(seen) == {3}  # traced with rotation, shift and zoom as one
        seen.clear()
        adapt_batch_norm(model, x, batch_size=16, passes=1)
        assert seen and set(seen) == {3}
    finally:
        resample.resample_once = composed
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert [type(layer) for layer in loaded.get_layer("augmentation").layers] == [
        type(layer) for layer in model.get_layer("augmentation").layers]
