"""Shared fixtures: tiny generated datasets and an isolated working directory per test."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# bench/dicom_copies.py writes the DICOM copies the tests read
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _xray(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A synthetic 'X-ray': dark background, two bright lung fields; PNEUMONIA adds haze."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = (np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.03)
             + np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.03))
    img = 40 + 120 * lungs + rng.normal(0, 25, (size, size))
    if label:
        cx, cy = rng.uniform(0.25, 0.75, 2)
        img += 30 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder_dataset(root: Path, counts: dict[str, tuple[int, int]] | None = None,
                        size: int = 40, seed: int = 0, per_patient: int = 2,
                        settings: bool = True) -> Path:
    """ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/ with Kermany-style names, 2 images a patient;
    with `settings`, the pneumo-exp.yaml that fits it."""
    counts = counts or {"train": (24, 36), "val": (4, 4), "test": (6, 6)}
    rng = np.random.default_rng(seed)
    patient = 100
    for split, per_class in counts.items():
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class[label]):
                if i % per_patient == 0:
                    patient += 1
                name = (f"IM-{patient:04d}-{i:04d}.jpeg" if label == 0
                        else f"person{patient}_bacteria_{i}.jpeg")
                Image.fromarray(_xray(rng, label, size)).save(folder / name, quality=95)
    # the settings that fit a dataset this small, as the bundled sample carries its own:
    # every trial at full fidelity (a user's --set may turn screening on)
    if settings:
        (root / "pneumo-exp.yaml").write_text("search:\n  screen_trials: 0\n")
    return root


def make_site_folder(root: Path, normal: int = 20, pneumonia: int = 20) -> Path:
    """NORMAL/ and PNEUMONIA/ of NIH-style names (two images a patient), and labels.csv."""
    rng = np.random.default_rng(3)
    rows = [["class", "file", "patient_age", "view_position", "patient_id"]]
    for label, (cls, n) in enumerate((("NORMAL", normal), ("PNEUMONIA", pneumonia))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            patient = 1000 * (label + 1) + i // 2
            name = f"{patient:08d}_{i % 2:03d}.png"
            Image.fromarray(_xray(rng, label, 48)).save(root / cls / name)
            rows.append([cls, name, str(30 + i), "PA" if i % 3 else "AP", str(patient)])
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def tiny_base(size: int = 32, momentum: float = 0.99) -> Any:
    """A small batch-normalized network, as a site search's base member (`momentum`: its
    normalization layers', Keras' default unless given)."""
    import keras

    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=momentum)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def checked_contract(models: list[Any], size: int, images: np.ndarray | None = None,
                     **fields: Any) -> Any:
    """A contract for `models` (each at `size` px, one channel) that carries every check
    write_version requires: validation's feature references, from `images` (default: 40
    synthetic X-rays of 20 patients; each image one patient when given), and the training
    data's population unless `fields` state one."""
    from pneumo_exp.config import load_config
    from pneumo_exp.serving.contract import VersionContract
    from pneumo_exp.serving.features import validation_features

    rng = np.random.default_rng(0)
    if images is None:
        labels = np.array([0, 1] * 20)
        images = np.stack([_xray(rng, y, size) for y in labels])[..., None]
        groups = np.repeat(np.arange(20), 2).astype(str)
    else:
        labels = np.arange(len(images)) % 2
        groups = np.arange(len(images)).astype(str)
    features, adapted = validation_features(models, [images] * len(models), labels, groups,
                                            rng.random(len(images)))
    return VersionContract(**{"members": ((size, 1),) * len(models), "threshold": 0.5,
                              "features": features, "features_adapted": adapted,
                              "population": load_config("aug_cnn").population, **fields})


def add_bad_files(class_dir: Path) -> list[str]:
    """A corrupt JPEG, a .DS_Store and a zero-byte file; returns their names."""
    good = next(class_dir.glob("*.jpeg")).read_bytes()
    (class_dir / "corrupt.jpeg").write_bytes(good[:200] + b"\x00garbage" * 50)
    (class_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    (class_dir / "empty.jpeg").write_bytes(b"")
    return ["corrupt.jpeg", ".DS_Store", "empty.jpeg"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the session's search (a real 2-trial search) is an end-to-end test."""
    for item in items:
        if {"searched", "search_session"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_inherited_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; start every test without it,
    so commands (and subprocesses) use the store of their working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh directory: mlruns/ and .pneumo/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "chest_xray")


OVERRIDES = {"search.max_trials": 2, "train.epochs": 2, "search.tuner": "random",
             "data.image_size": 48, "train.batch_size": 16}  # 48: the 4-block initial point fits


@pytest.fixture(scope="session")
def search_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-trial x 2-epoch aug_cnn search on a tiny dataset with 3 unreadable files, run
    once per session in its own directory (its mlruns/ and .pneumo/)."""
    from pneumo_exp.config import load_config
    from pneumo_exp.search.run import run_search
    from pneumo_exp.tracking.store import connect

    root = tmp_path_factory.mktemp("search")
    # validation of 32 images or more: adapt needs its adapted reference
    data = make_folder_dataset(root / "chest_xray", {"train": (24, 36), "val": (16, 16),
                                                       "test": (6, 6)})
    bad = add_bad_files(data / "train" / "NORMAL")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = load_config("aug_cnn", {**OVERRIDES, "data.root": str(data)})
        result = run_search(cfg, verbose=0)
        client = connect()
    return {"root": root, "cfg": cfg, "result": result, "client": client, "bad": bad,
            "uri": client.tracking_uri}


@pytest.fixture
def searched(search_session: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The session's search, with the test running in its directory and MLflow store."""
    import mlflow
    monkeypatch.chdir(search_session["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", search_session["uri"])
    mlflow.set_tracking_uri(search_session["uri"])
    return search_session
