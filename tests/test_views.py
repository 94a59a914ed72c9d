"""Test-time views: what each view does to an image, and that a packaged version averages
its members over its views."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import checked_contract
from PIL import Image

from pneumo_exp.data.views import ORIGINAL, view_images


def _square(size: int = 20) -> np.ndarray:
    """One image: black, with a white square in its central half."""
    x = np.zeros((1, size, size, 1), np.uint8)
    x[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    return x


def test_crop_zooms_in_and_pad_zooms_out() -> None:
    x = _square()
    white = float((x > 127).mean())
    assert np.array_equal(view_images(x, ORIGINAL), x.astype(np.float32))
    tighter, looser = view_images(x, "crop 0.5"), view_images(x, "pad 0.25")
    assert tighter.shape == looser.shape == x.shape and tighter.dtype == np.float32
    assert (tighter > 127).mean() > 0.9 > white  # the central half fills the image
    assert (looser > 127).mean() < white  # framed looser, the square is smaller
    assert looser[0, 0, 0, 0] == 0  # edge pixels repeated, not mirrored content


def test_shift_moves_the_image_and_repeats_its_edge() -> None:
    x = np.arange(100, dtype=np.uint8).reshape(1, 10, 10, 1)
    down = view_images(x, "shift 0.2 0")[0, :, :, 0]
    assert np.array_equal(down[2:], x[0, :8, :, 0])  # moved down two rows
    assert np.array_equal(down[0], x[0, 0, :, 0]) and np.array_equal(down[1], x[0, 0, :, 0])
    left = view_images(x, "shift 0 -0.3")[0, :, :, 0]
    assert np.array_equal(left[:, :7], x[0, :, 3:, 0])
    assert np.array_equal(left[:, 9], x[0, :, 9, 0])


@pytest.mark.parametrize("spec", ["flip", "crop", "crop 1.2", "pad -0.1", "shift 0.6 0",
                                  "shift 0.1", "original 1", "crop x", "shift x 0", ""])
def test_a_bad_view_names_the_grammar(spec: str) -> None:
    with pytest.raises(ValueError, match="is not a view: 'original'"):
        view_images(np.zeros((1, 4, 4, 1), np.uint8), spec)


def test_a_bad_view_stops_when_the_settings_are_read() -> None:
    """Before any search or promote: the search's configuration carries the views too."""
    from pneumo_exp.config import RegistryConfig, load_config
    from pneumo_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'registry\.views': 'crop 1\.5' is not a view"):
        RegistryConfig(views=["original", "crop 1.5"])
    with pytest.raises(ConfigError, match=r"'registry\.views': 'crop 2' is not a view"):
        load_config("aug_cnn", {"registry.views": ["original", "crop 2"]})


def _tiny_model() -> keras.Model:
    """A model whose score depends on where the image is bright (the views must matter)."""
    inputs = keras.Input((16, 16, 1))
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(1, activation="sigmoid",
                               kernel_initializer=keras.initializers.RandomNormal(seed=1))
    return keras.Model(inputs, dense(hidden))


def test_a_version_averages_its_members_over_its_views(workdir: Path) -> None:
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.serving.model import classifier, images_frame

    views = [ORIGINAL, "crop 0.8", "shift 0.1 0"]
    models = [_tiny_model(), _tiny_model()]
    path = workdir / "scan.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    with mlflow.start_run():
        contract = checked_contract(models, 16)
        with_views = write_version("views", contract.with_changes(views=tuple(views)),
                                   models, {}).source
        one_view = write_version("one-view", contract, models, {}).source
    loaded = mlflow.pyfunc.load_model(with_views)
    assert loaded.model_config["views"] == views
    inner = classifier(loaded)
    arrays = inner.decode([path.read_bytes()]).arrays[(16, 1)]
    expected = np.mean([m.predict(view_images(arrays, v), verbose=0).ravel()
                        for m in models for v in views])
    got = loaded.predict(images_frame([path]))["probability"][0]
    assert got == pytest.approx(float(expected), abs=1e-6)
    plain = mlflow.pyfunc.load_model(one_view).predict(images_frame([path]))["probability"][0]
    assert abs(plain - got) > 1e-4  # the views changed the score


def test_promote_takes_its_views_from_the_command_line(workdir: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """`--set registry.views=...` (make promote SET=...) reaches promote: a bad view is named
    before any run is read."""
    from pneumo_exp.cli import main

    assert main(["promote", "--set", "registry.views=[original, crop 2]"]) != 0
    assert "'crop 2' is not a view" in capsys.readouterr().err
