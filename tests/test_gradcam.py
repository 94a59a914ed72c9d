"""Grad-CAM: where a model found its evidence, for every architecture, per trial and for
any registered version (pneumo-exp explain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import pytest
from PIL import Image

from pneumo_exp.explain.gradcam import feature_layer, grad_cam, review_sets
from pneumo_exp.hypermodels import HYPERMODELS


def _corner_images(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Noise; class 1 has a bright 8x8 square in the top-left corner."""
    labels = np.arange(n) % 2
    images = rng.normal(80, 25, (n, size, size, 1))
    images[labels == 1, 2:10, 2:10] += 140
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_map_mass_sits_where_the_evidence_is() -> None:
    keras.utils.set_random_seed(0)
    x, y = _corner_images(np.random.default_rng(0), 256)
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    test, labels = _corner_images(np.random.default_rng(1), 20)
    maps, prob = grad_cam(model, test[labels == 1])
    assert maps.shape == (10, 32, 32) and (prob > 0.5).all()
    assert all(m.std() > 0.01 for m in maps)  # not constant
    corner = maps[:, :16, :16].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert (corner > 0.6).all(), corner


@pytest.mark.parametrize("arch", sorted(HYPERMODELS))
def test_every_architecture_has_a_feature_map(arch: str) -> None:
    kwargs = {"weights": None, "space": {"base": "mobilenet_v3_small"}} if (
        arch == "transfer") else {}
    model = HYPERMODELS[arch]((48, 48, 1), **kwargs).build(kt.HyperParameters())
    layer = feature_layer(model)
    assert len(layer.output.shape) == 4
    if arch == "transfer":
        assert isinstance(layer, keras.Model)  # the pretrained base's own last map
    elif arch in ("cnn", "aug_cnn", "site"):  # site: from scratch, the aug_cnn family
        assert isinstance(layer, keras.layers.MaxPooling2D)  # the last conv block's output
    else:  # dense networks: the (scaled) image itself, a gradient saliency map
        assert isinstance(layer, keras.layers.Rescaling)
    x = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 1)).astype(np.uint8)
    maps, _ = grad_cam(model, x)
    assert maps.shape == (3, 48, 48) and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="no spatial feature map"):
        flat = keras.Input((5,))
        feature_layer(keras.Model(flat, keras.layers.Dense(1)(flat)))
    assert maps.min() >= 0 and maps.max() <= 1


def test_review_sets_pick_the_most_confident_errors() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    prob = np.array([0.9, 0.6, 0.1, 0.2, 0.45, 0.8, 0.7, 0.99])
    sets = review_sets(labels, prob, k=2)
    assert sets["false_positives"].tolist() == [0, 6]  # 0.9 then 0.7
    assert sets["false_negatives"].tolist() == [3, 4]  # 0.2 then 0.45
    assert set(sets["correct"].tolist()) == {7, 2}


def test_trial_runs_carry_gradcam_grids(searched: dict[str, Any]) -> None:
    client, result = searched["client"], searched["result"]
    paths = {a.path for a in client.list_artifacts(result.best_run_id, "gradcam")}
    assert paths == {"gradcam/val_false_positives.png", "gradcam/val_false_negatives.png",
                     "gradcam/val_correct.png"}


def test_explain_writes_an_overlay_per_image(searched: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """For a single model and for an ensemble of the session's two trials."""
    from pneumo_exp.cli import main
    from pneumo_exp.config import RegistryConfig
    from pneumo_exp.registry.promote import promote

    one = promote(RegistryConfig(model_name="explained"), arch="aug_cnn", top=1).version
    two = promote(RegistryConfig(model_name="explained"), arch="aug_cnn", top=2).version
    files = sorted(Path(searched["cfg"].data.root, "test", "PNEUMONIA").glob("*.jpeg"))[:2]
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    for version in (one.version, two.version):
        out = tmp_path / f"v{version}"
        assert main(["explain", "--model", f"models:/explained/{version}", *map(str, files),
                     str(bad), "--out", str(out)]) == 0
        written = sorted(out.glob("*.png"))
        assert [p.name for p in written] == [f"{f.stem}_gradcam.png" for f in files]
        assert Image.open(written[0]).size[0] > 100
        printed = capsys.readouterr().out
        assert "p=" in printed and "unreadable" in printed
