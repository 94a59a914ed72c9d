"""Promotion to the Model Registry, the test evaluation, aliases, and reuse of the model."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from PIL import Image

from pneumo_exp.config import RegistryConfig
from pneumo_exp.evaluation import bootstrap_ci, choose_threshold
from pneumo_exp.registry import promote


def _trials(searched: dict[str, Any]) -> list[Any]:
    """The session search's two trial runs, best validation AUC first."""
    result = searched["result"]
    runs = searched["client"].search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
        order_by=["metrics.best_val_auc DESC"])
    assert runs[0].data.metrics["best_val_auc"] > runs[1].data.metrics["best_val_auc"]
    return runs


@pytest.fixture
def promoted(searched: dict[str, Any]) -> dict[str, Any]:
    """best -> v1 (champion); the worse trial -> v2 (challenger); both promoted once."""
    if "promotions" not in searched:
        best, worse = _trials(searched)
        first = promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn")
        second = promote(RegistryConfig(model_name="acceptance"), run_id=worse.info.run_id)
        searched["promotions"] = {"best": best, "worse": worse, "first": first,
                                  "second": second}
    return searched["promotions"]


def test_best_trial_becomes_version_1_champion(promoted: dict[str, Any],
                                               searched: dict[str, Any]) -> None:
    v1 = promoted["first"].version
    assert promoted["first"].created and str(v1.version) == "1"
    assert set(v1.aliases) == {"champion", "challenger"}  # as registered, before version 2
    assert v1.tags["pneumo.source_run_id"] == promoted["best"].info.run_id
    assert v1.tags["pneumo.arch"] == "aug_cnn"
    assert v1.tags["pneumo.data_fingerprint"] == searched["result"].data.fingerprint
    assert json.loads(v1.tags["pneumo.hyperparameters"]) == promoted["best"].data.params
    assert float(v1.tags["pneumo.objective_value"]) == promoted["best"].data.metrics[
        "best_val_auc"]
    assert 0 < float(v1.tags["pneumo.threshold"]) <= 1
    assert "pneumo.val_auc" in v1.tags and "test accuracy" in v1.description


def test_worse_version_is_challenger_and_champion_stays(promoted: dict[str, Any],
                                                        searched: dict[str, Any]) -> None:
    client = searched["client"]
    assert promoted["second"].created and str(promoted["second"].version.version) == "2"
    assert str(client.get_model_version_by_alias("acceptance", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("acceptance", "challenger").version) == "2"


def test_promoting_again_adds_nothing(promoted: dict[str, Any],
                                      searched: dict[str, Any]) -> None:
    again = promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn")
    assert not again.created and str(again.version.version) == "1"
    assert not promote(RegistryConfig(model_name="acceptance"),
                       run_id=promoted["worse"].info.run_id).created
    assert len(searched["client"].search_model_versions("name = 'acceptance'")) == 2


def test_champion_moves_to_a_better_version(searched: dict[str, Any]) -> None:
    best, worse = _trials(searched)
    first = promote(RegistryConfig(model_name="moves"), run_id=worse.info.run_id)
    second = promote(RegistryConfig(model_name="moves"), run_id=best.info.run_id)
    assert (first.champion, second.champion) == ("1", "2")
    client = searched["client"]
    assert str(client.get_model_version_by_alias("moves", "champion").version) == "2"


def test_evaluation_run_holds_every_figure(promoted: dict[str, Any],
                                           searched: dict[str, Any]) -> None:
    client = searched["client"]
    v1 = promoted["first"].version
    run = client.get_run(v1.tags["pneumo.evaluation_run_id"])
    assert v1.run_id == run.info.run_id  # the version links to its evaluation run
    m = run.data.metrics
    for name in ("accuracy", "auc", "sensitivity", "specificity", "precision", "f1", "loss"):
        assert 0 <= m[f"test_{name}"] <= (1 if name != "loss" else 50)
    for name in ("accuracy", "sensitivity", "specificity"):
        assert f"test_{name}_at_thr" in m
    for name in ("accuracy", "auc"):
        assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"]
    assert m["test_tn"] + m["test_fp"] + m["test_fn"] + m["test_tp"] == 12  # the test split
    assert m["test_threshold"] == pytest.approx(float(v1.tags["pneumo.threshold"]), abs=1e-6)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/test_confusion_matrix_0.5.png", "plots/test_confusion_matrix_threshold.png",
            "plots/test_roc.png", "plots/test_confusion_matrix_0.5.json"} <= plots


def test_threshold_keeps_sensitivity_with_best_specificity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert choose_threshold(y, p, 0.75) == pytest.approx(0.7)  # 3/4 caught, specificity 1
    assert choose_threshold(y, p, 1.0) == pytest.approx(0.4)  # all caught, specificity 3/4


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    ci = bootstrap_ci(y, p, 0.5, n=300)
    assert ci["auc"][0] < ci["auc"][1] and ci["accuracy"][0] < ci["accuracy"][1]


@pytest.fixture
def two_images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    big = tmp_path / "big_gray.jpeg"
    Image.fromarray(rng.integers(0, 255, (1500, 2000), dtype=np.uint8), "L").save(big)
    small = tmp_path / "small_rgb.png"
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), "RGB").save(small)
    return [big, small]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_predict_pyfunc_and_served_model_agree(promoted: dict[str, Any], two_images: list[Path],
                                               capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.serving import images_frame

    uri = "models:/acceptance@champion"
    pyfunc = mlflow.pyfunc.load_model(uri).predict(images_frame(two_images))
    assert ((pyfunc["probability"] >= 0) & (pyfunc["probability"] <= 1)).all()

    assert main(["predict", "--model", uri, *map(str, two_images), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in cli] == [str(p) for p in two_images]
    np.testing.assert_allclose([r["probability"] for r in cli], pyfunc["probability"], atol=1e-5)

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(p.read_bytes()).decode()] for p in two_images]}}).encode()
        answer = None
        for _ in range(120):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as r:
                    answer = json.load(r)["predictions"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert answer is not None, "the model server did not answer"
        np.testing.assert_allclose([a["probability"] for a in answer], pyfunc["probability"],
                                   atol=1e-5)
        assert [a["label"] for a in answer] == list(pyfunc["label"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreadable_file_is_labelled_not_fatal(promoted: dict[str, Any], tmp_path: Path,
                                               two_images: list[Path]) -> None:
    from pneumo_exp.inference import load, predict_files
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    table = predict_files(load("models:/acceptance@champion"), [bad, two_images[1]])
    assert table["label"].tolist()[0] == "unreadable" and np.isnan(table["probability"][0])
    assert table["label"].tolist()[1] in ("NORMAL", "PNEUMONIA")


def test_evaluate_a_labelled_folder(promoted: dict[str, Any], searched: dict[str, Any]) -> None:
    from pneumo_exp.inference import evaluate_folder
    figures = evaluate_folder("models:/acceptance@champion",
                              Path(searched["cfg"].data.root) / "test", n_bootstrap=200)
    v1_eval = searched["client"].get_run(
        promoted["first"].version.tags["pneumo.evaluation_run_id"]).data.metrics
    # the same model on the same test images, decoded from the files by the pyfunc model
    assert figures["eval_auc"] == pytest.approx(v1_eval["test_auc"], abs=1e-6)
    assert figures["eval_accuracy"] == pytest.approx(v1_eval["test_accuracy"], abs=1e-6)
