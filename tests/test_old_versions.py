"""Versions registered by the flat package that came before the package's stage folders
still load and predict: in this code, and in an environment without pneumo-exp installed,
from the code snapshot each version carries. A version from before a field reads it as
the training data's default (the population), and one from before feature references
keeps the shift check it stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_folder_dataset
from PIL import Image

pytestmark = pytest.mark.slow  # a search and a promotion by the old code, in a subprocess

REPO = Path(__file__).resolve().parents[1]
FLAT_LAYOUT = "69f926df172017d804d989e1a17c8214f0f1dcac"  # the last commit before the folders
SHIFT_CHECK = "a07d7d8d811cf92f15e8f00f6c3ae2f5260babf7"  # the last before feature references

OLD_PROMOTION = """
import json, sys
from pathlib import Path
import pneumo_exp
assert Path(pneumo_exp.__file__).parent == Path(sys.argv[1]), pneumo_exp.__file__
from pneumo_exp.config import RegistryConfig, load_config
from pneumo_exp.inference import image_files, load, predict_files
from pneumo_exp.registry import promote
from pneumo_exp.search import run_search
cfg = load_config("aug_cnn", {"data.root": sys.argv[2], "search.max_trials": 1,
                              "train.epochs": 1, "data.image_size": 32,
                              "search.tuner": "random", "space.conv_blocks": 2})
run_search(cfg, verbose=0)
promote(RegistryConfig(model_name="flat"), arch="aug_cnn", top=1)
table = predict_files(load("models:/flat/1"), image_files([sys.argv[3]]))
print(json.dumps(table["probability"].tolist()))
"""

# No pneumo_exp on the path: the editable install's finder removed, the repository not on
# sys.path. The model's own code snapshot is what loads.
CLEAN = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p and p.rstrip("/") != sys.argv[1]]
import importlib.util
assert importlib.util.find_spec("pneumo_exp") is None
import mlflow, pandas as pd
from pathlib import Path
model = mlflow.pyfunc.load_model("models:/flat/1")
files = sorted(Path(sys.argv[2]).iterdir())
out = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
import pneumo_exp
print(json.dumps({"probability": out["probability"].tolist(), "code": pneumo_exp.__file__}))
"""


SHIFT_PROMOTION = """
import json, sys
from pathlib import Path
import pneumo_exp
assert Path(pneumo_exp.__file__).parent == Path(sys.argv[1]), pneumo_exp.__file__
from pneumo_exp.config import RegistryConfig, load_config
from pneumo_exp.data.images import image_files
from pneumo_exp.registry.promote import promote
from pneumo_exp.search.run import run_search
from pneumo_exp.serving.predict import load, predict_files
cfg = load_config("aug_cnn", {"data.root": sys.argv[2], "search.max_trials": 1,
                              "train.epochs": 1, "data.image_size": 48, "search.tuner": "random"})
run_search(cfg, verbose=0)
promote(RegistryConfig(model_name="shift"), arch="aug_cnn", top=1, any_trial=True)
table = predict_files(load("models:/shift/1"), image_files([sys.argv[3]]))
print(json.dumps({"probability": table["probability"].tolist(),
                  "check": table["check"].tolist()}))
"""


def _old_code(commit: str, root: Path) -> Path:
    """The package and experiments of `commit`, extracted under `root`."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode:
        pytest.skip(f"commit {commit[:8]} is not in this clone's history (a shallow "
                    "clone?): there is no old package to register a version with.")
    archive = root / "old.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), commit,
                    "pneumo_exp", "experiments"], check=True)
    with tarfile.open(archive) as t:
        t.extractall(root / "code", filter="data")
    return root / "code"


@pytest.fixture(scope="module")
def shift_version(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A version registered by the code before feature references, with the shift limit its
    per-image check kept; what that code answered on four test images and a colour card."""
    root = tmp_path_factory.mktemp("shift")
    old = _old_code(SHIFT_CHECK, root)
    data = make_folder_dataset(root / "chest_xray", size=48)
    scans = root / "scans"
    scans.mkdir()
    for f in sorted((data / "test" / "PNEUMONIA").iterdir())[:2] + sorted(
            (data / "test" / "NORMAL").iterdir())[:2]:
        (scans / f.name).write_bytes(f.read_bytes())
    card = np.zeros((48, 48, 3), np.uint8)  # no chest: unlike every training image
    card[:, :16, 0] = card[:, 16:32, 1] = card[:, 32:, 2] = 255
    Image.fromarray(card).save(scans / "card.png")
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(old), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", SHIFT_PROMOTION, str(old / "pneumo_exp"),
                           str(data), str(scans)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"work": work, "scans": scans, **json.loads(proc.stdout.strip().splitlines()[-1])}


def test_a_version_from_before_feature_references_keeps_its_shift_check(
        shift_version: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its stored shift limit still flags what the code that registered it flagged, by the
    same figures; no feature reference is invented for it."""
    from pneumo_exp.data.images import image_files
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load, predict_files

    monkeypatch.chdir(shift_version["work"])
    model = load("models:/shift/1")
    assert classifier(model).contract.features is None
    assert "shift_limit" in classifier(model).contract.reference
    table = predict_files(model, image_files([shift_version["scans"]]))
    assert table["probability"].tolist() == pytest.approx(shift_version["probability"],
                                                          abs=1e-6)
    assert table["check"].tolist() == shift_version["check"]
    flagged = [name for name, check in zip(table["file"], shift_version["check"],
                                           strict=True) if check]
    assert [Path(f).name for f in flagged] == ["card.png"], shift_version["check"]


@pytest.fixture(scope="module")
def flat_version(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A version searched, promoted and used by the flat package, in its own store."""
    root = tmp_path_factory.mktemp("flat")
    old = _old_code(FLAT_LAYOUT, root)
    data = make_folder_dataset(root / "chest_xray", size=40, settings=False)  # keys it lacks
    scans = root / "scans"
    scans.mkdir()
    for f in sorted((data / "test" / "PNEUMONIA").iterdir())[:2] + sorted(
            (data / "test" / "NORMAL").iterdir())[:2]:
        (scans / f.name).write_bytes(f.read_bytes())
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(old), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", OLD_PROMOTION, str(old / "pneumo_exp"),
                           str(data), str(scans)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"work": work, "scans": scans, "old": old,
            "probability": json.loads(proc.stdout.strip().splitlines()[-1])}


def test_this_code_loads_and_predicts_a_flat_version(flat_version: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.data.images import image_files
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load, predict_files

    monkeypatch.chdir(flat_version["work"])
    model = load("models:/flat/1")
    table = predict_files(model, image_files([flat_version["scans"]]))
    assert table["probability"].tolist() == pytest.approx(flat_version["probability"], abs=1e-6)
    inner = classifier(model)  # this code's class: what adapt and explain use
    assert type(inner).__module__ == "pneumo_exp.serving.model"
    assert main(["predict", "--model", "models:/flat/1", "--format", "json",
                 str(flat_version["scans"])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["probability"] for r in printed] == pytest.approx(flat_version["probability"],
                                                                abs=1e-6)


def test_a_flat_version_loads_without_pneumo_exp_installed(flat_version: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{flat_version['work'] / 'mlruns' / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-c", CLEAN, str(REPO), str(flat_version["scans"])],
                          cwd=flat_version["work"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["probability"] == pytest.approx(flat_version["probability"], abs=1e-6)
    # the snapshot the version carries, not this repository nor the old checkout
    assert "/code/pneumo_exp/" in out["code"] and not out["code"].startswith(str(REPO))
    assert not out["code"].startswith(str(flat_version["old"]))


def test_a_flat_version_flags_an_adult(flat_version: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A version registered before versions carried whom they are for is for the training
    data's patients (Kermany's children): an adult's DICOM is flagged on it, a child's not."""
    from dicom_copies import write_dicom
    from pydicom import dcmread

    from pneumo_exp.data.images import OUTSIDE
    from pneumo_exp.serving.predict import load, predict_files

    monkeypatch.chdir(flat_version["work"])
    pixels = np.asarray(Image.open(sorted(flat_version["scans"].iterdir())[0]).convert("L"))
    for name, age in (("adult.dcm", "045Y"), ("child.dcm", "003Y")):
        ds = dcmread(write_dicom(pixels, tmp_path / name))
        ds.PatientAge, ds.ViewPosition = age, "PA"
        ds.save_as(tmp_path / name, enforce_file_format=True)
    table = predict_files(load("models:/flat/1"), [tmp_path / "adult.dcm",
                                                   tmp_path / "child.dcm"])
    adult, child = table.to_dict(orient="records")
    assert adult["probability"] is not None and adult["check"].startswith(OUTSIDE)
    assert "45" in adult["check"] and not child["check"]

