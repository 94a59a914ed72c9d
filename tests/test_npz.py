"""MedMNIST-style .npz sources: their own splits, any image size, checked keys and lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo_exp.config import DataConfig
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.errors import DataError


def make_npz(path: Path, side: int = 28, sizes: tuple[int, int, int] = (40, 10, 12)) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1)
        images = rng.integers(0, 100, (n, side, side)).astype(np.uint8)
        images[labels[:, 0] == 1] += 100  # brighter pneumonia
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


def test_npz_splits_are_used_as_they_are(workdir: Path) -> None:
    path = make_npz(workdir / "pneumoniamnist.npz")
    data = load_training_data(DataConfig(root=str(path), image_size=32), seed=0)
    assert (len(data.train), len(data.val)) == (36, 4 + 10)  # 10% of train + official val
    assert data.train.images.shape[1:] == (32, 32, 1)
    official = load_training_data(DataConfig(root=str(path), image_size=32,
                                              validation="official"), seed=0)
    assert (len(official.train), len(official.val)) == (40, 10)


@pytest.mark.parametrize("side", [28, 64, 128])
def test_npz_any_size_and_rgb(tmp_path: Path, side: int) -> None:
    path = make_npz(tmp_path / f"pneumoniamnist_{side}.npz", side=side)
    split = load_split(open_source(path), "test", 48, 3, tmp_path / "cache")
    assert split.data.images.shape == (12, 48, 48, 3)
    assert split.data.class_counts() == {"NORMAL": 6, "PNEUMONIA": 6}
    assert load_split(open_source(path), "test", 48, 3, tmp_path / "cache").from_cache


def test_npz_missing_split_key(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, train_images=np.zeros((4, 28, 28), np.uint8),
             train_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="no 'test_images' array"):
        load_split(open_source(path), "test", 28, 1, tmp_path / "cache")


def test_npz_bad_labels(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, train_images=np.zeros((4, 28, 28), np.uint8),
             train_labels=np.array([0, 1, 2, 1]))
    with pytest.raises(DataError, match="0/1"):
        load_split(open_source(path), "train", 28, 1, tmp_path / "cache")


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, train_images=np.array([object()], dtype=object),
             train_labels=np.array([0]))
    with pytest.raises(DataError, match="no unpickling"):
        load_split(open_source(path), "train", 28, 1, tmp_path / "cache")


@pytest.mark.slow
def test_npz_search_then_promote(workdir: Path) -> None:
    from pneumo_exp.config import load_config
    from pneumo_exp.registry.promote import promote
    from pneumo_exp.search.run import run_search
    path = make_npz(workdir / "pneumoniamnist_64.npz", side=64)
    cfg = load_config("aug_cnn", {"data.root": str(path), "data.image_size": 48,
                                  "search.max_trials": 1, "train.epochs": 1,
                                  "search.screen_trials": 0})
    result = run_search(cfg, verbose=0)
    assert result.trials["completed_trials"] == 1
    promotion = promote(cfg.registry, arch="aug_cnn", any_trial=True)  # 1 epoch: may not learn
    assert promotion.created and promotion.champion == "1"
    assert promotion.figures["test_tn"] + promotion.figures["test_fp"] + promotion.figures[
        "test_fn"] + promotion.figures["test_tp"] == 12  # the file's own test split
