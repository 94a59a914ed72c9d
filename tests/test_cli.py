"""The command line as users run it: exit codes and one-line messages, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_folder_dataset


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pneumo_exp.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_missing_class_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "d", {"train": (4, 4)})
    for f in (data / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    (data / "train" / "PNEUMONIA").rmdir()
    proc = run_cli("search", "aug_cnn", "--data", str(data), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"pneumo-exp: error: {data}/train/PNEUMONIA is missing: every split needs the class "
        "folders NORMAL and PNEUMONIA (ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|png|dcm)."]


@pytest.mark.parametrize(("args", "needle"), [
    (["search", "resnet9"], "unknown architecture 'resnet9'"),
    (["search", "aug_cnn", "--epochs", "-1"], "'train.epochs': must be an integer >= 1; got -1"),
    (["search", "aug_cnn", "--image-size", "0"], "'data.image_size': must be an integer >= 8"),
    (["search", "aug_cnn", "--tuner", "grid"],
     "'search.tuner': must be 'random', 'bayesian' or 'hyperband'"),
])
def test_bad_configuration_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "search", "aug_cnn", "--data", str(tmp_path / "nowhere"),
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "dataset not found" in proc.stderr


def _npz(path: Path, **arrays: object) -> Path:
    import numpy as np
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("case", "needle"), [
    ("missing_root", "dataset not found: {root}"),
    ("empty_split", "{root}/train/NORMAL is empty"),
    ("npz_missing_keys", "lacks train_images/train_labels"),
    ("npz_mismatched", "train_images has 5 images but train_labels has 4 labels"),
    ("not_a_dataset", "is neither a dataset folder"),
])
def test_structural_data_problems_exit_2_with_one_message(tmp_path: Path, case: str,
                                                           needle: str) -> None:
    import numpy as np
    root = tmp_path / "data"
    if case == "empty_split":
        make_folder_dataset(root, {"train": (2, 2)})
        for f in (root / "train" / "NORMAL").iterdir():
            f.unlink()
    elif case == "npz_missing_keys":
        root = _npz(tmp_path / "pneumoniamnist.npz", images=np.zeros((2, 28, 28), np.uint8))
    elif case == "npz_mismatched":
        root = _npz(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((5, 28, 28), np.uint8),
                    train_labels=np.zeros((4, 1), np.uint8))
    elif case == "not_a_dataset":
        root = tmp_path / "notes.txt"
        root.write_text("hello")
    proc = run_cli("search", "aug_cnn", "--data", str(root), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pneumo-exp: error: ")
    assert needle.format(root=root) in lines[0]


def test_the_next_command_is_shown_in_the_words_the_user_typed() -> None:
    import argparse

    from pneumo_exp.cli.commands.models import _use_it

    uri = "models:/pneumonia-classifier/2"
    assert _use_it(argparse.Namespace(make=True), uri) == (
        f"Use it: make predict MODEL={uri} FILES=scan.jpeg")
    assert _use_it(argparse.Namespace(make=False), uri) == (
        f"Use it: pneumo-exp predict --model {uri} scan.jpeg")
