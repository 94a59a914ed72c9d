"""Promotion to the Model Registry, ensembles, the test evaluation, calibration, the model
card, aliases, and reuse of the model (predict, pyfunc, server)."""

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
from pneumo_exp.evaluation.calibration import apply_temperature, choose_threshold
from pneumo_exp.evaluation.metrics import bootstrap_ci
from pneumo_exp.registry.aliases import move_aliases
from pneumo_exp.registry.promote import promote
from pneumo_exp.tracking.names import METRIC_DECIMALS


def _trials(searched: dict[str, Any]) -> list[Any]:
    """The session search's two trial runs, by trial id."""
    result = searched["result"]
    runs = searched["client"].search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return sorted(runs, key=lambda r: r.data.tags["pneumo.trial_id"])


@pytest.fixture
def promoted(searched: dict[str, Any]) -> dict[str, Any]:
    """The best trial -> v1; the other trial -> v2; both promoted once."""
    if "promotions" not in searched:
        first = promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn", top=1)
        best_id = first.version.tags["pneumo.source_run_ids"]
        other = next(r for r in _trials(searched) if r.info.run_id != best_id)
        second = promote(RegistryConfig(model_name="acceptance"), run_id=other.info.run_id)
        best = searched["client"].get_run(best_id)
        searched["promotions"] = {"best": best, "other": other, "first": first,
                                  "second": second}
    return searched["promotions"]


def test_best_trial_becomes_version_1_champion(promoted: dict[str, Any],
                                               searched: dict[str, Any]) -> None:
    v1, best = promoted["first"].version, promoted["best"]
    assert promoted["first"].created and str(v1.version) == "1"
    assert set(v1.aliases) == {"champion", "challenger"}  # as registered, before version 2
    # the best by the search's exact objective: the parent's best run, the oracle's choice
    assert best.info.run_id == searched["result"].best_run_id
    assert v1.tags["pneumo.arch"] == "aug_cnn" and v1.tags["pneumo.members"] == "1"
    assert v1.tags["pneumo.data_fingerprint"] == searched["result"].data.fingerprint
    assert json.loads(v1.tags["pneumo.hyperparameters"]) == best.data.params
    # the objective recomputed on the rebuilt validation set is the trial's own figure (as
    # logged: to METRIC_DECIMALS)
    assert round(float(v1.tags["pneumo.objective_value"]), METRIC_DECIMALS) == (
        best.data.metrics["best_val_auc"])
    assert 0 < float(v1.tags["pneumo.threshold"]) <= 1


def test_temperature_is_fitted_on_the_rebuilt_validation_set(promoted: dict[str, Any],
                                                             searched: dict[str, Any]) -> None:
    """The version's temperature is the log-loss fit on its trial's validation scores, and
    the evaluation run's calibrated validation loss is what it gives."""
    from sklearn.metrics import log_loss

    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.evaluation.calibration import apply_temperature, fit_temperature
    from pneumo_exp.registry.selection import trial_model

    v1, cfg = promoted["first"].version, searched["cfg"]
    val = load_training_data(cfg.data, cfg.search.seed).val
    raw = trial_model(promoted["best"]).predict(val.images, verbose=0).ravel()
    temperature = float(v1.tags["pneumo.temperature"])
    assert temperature == pytest.approx(fit_temperature(val.labels, raw), rel=1e-4)
    evaluation = searched["client"].get_run(v1.tags["pneumo.evaluation_run_id"]).data.metrics
    calibrated = np.clip(apply_temperature(raw, temperature), 1e-7, 1 - 1e-7)
    assert evaluation["val_loss"] == pytest.approx(log_loss(val.labels, calibrated), rel=1e-4)
    assert evaluation["val_uncalibrated_loss"] == pytest.approx(
        log_loss(val.labels, np.clip(raw, 1e-7, 1 - 1e-7)), rel=1e-4)


def test_model_card_is_the_version_description(promoted: dict[str, Any],
                                               searched: dict[str, Any]) -> None:
    client, v1 = searched["client"], promoted["first"].version
    card = v1.description
    for section in ("Intended use", "Not for", "Training data", "Architecture and "
                    "hyperparameters", "Threshold rule", "Calibration", "Known limitations",
                    "Lineage", v1.tags["pneumo.source_run_ids"],
                    searched["result"].data.fingerprint):
        assert section in card
    logged = mlflow.artifacts.load_text(f"runs:/{v1.run_id}/model_card.md")
    assert logged == card
    assert "Intended use" in client.get_registered_model("acceptance").description


def test_other_version_is_challenger_and_champion_stays(promoted: dict[str, Any],
                                                        searched: dict[str, Any]) -> None:
    client = searched["client"]
    assert promoted["second"].created and str(promoted["second"].version.version) == "2"
    assert str(client.get_model_version_by_alias("acceptance", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("acceptance", "challenger").version) == "2"


def test_promoting_again_adds_nothing(promoted: dict[str, Any],
                                      searched: dict[str, Any]) -> None:
    again = promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn", top=1)
    assert not again.created and str(again.version.version) == "1"
    assert not promote(RegistryConfig(model_name="acceptance"),
                       run_id=promoted["other"].info.run_id).created
    assert len(searched["client"].search_model_versions("name = 'acceptance'")) == 2


def test_champion_moves_only_to_a_better_objective(searched: dict[str, Any]) -> None:
    """The alias rule on versions made for it: equal or worse keeps the champion."""
    client = searched["client"]
    client.create_registered_model("rule")
    source = _trials(searched)[0].info.artifact_uri

    def version(value: float, objective: str = "val_auc") -> str:
        v = client.create_model_version("rule", source, tags={
            "pneumo.objective": objective, "pneumo.objective_value": str(value)})
        return str(v.version)

    assert move_aliases(client, "rule", version(0.90), "max", tested=True) == "1"
    assert move_aliases(client, "rule", version(0.85), "max", tested=True) == "1"  # worse
    assert move_aliases(client, "rule", version(0.90), "max", tested=True) == "1"  # equal
    assert move_aliases(client, "rule", version(0.91), "max", tested=True) == "4"  # better
    not_comparable = version(0.2, "val_loss")
    assert move_aliases(client, "rule", not_comparable, "min", tested=True) == "4"
    assert str(client.get_model_version_by_alias("rule", "challenger").version) == "5"


def test_evaluation_run_holds_every_figure(promoted: dict[str, Any],
                                           searched: dict[str, Any]) -> None:
    client = searched["client"]
    v1 = promoted["first"].version
    run = client.get_run(v1.tags["pneumo.evaluation_run_id"])
    assert v1.run_id == run.info.run_id  # the version links to its evaluation run
    m = run.data.metrics
    for name in ("accuracy", "auc", "sensitivity", "specificity", "precision", "f1", "loss",
                 "ece", "brier", "uncalibrated_ece"):
        assert 0 <= m[f"test_{name}"] <= (1 if name != "loss" else 50)
    for name in ("accuracy", "sensitivity", "specificity"):
        assert f"test_{name}_at_thr" in m
    for name in ("accuracy", "auc", "accuracy_at_thr"):
        assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"]
    assert m["test_tn"] + m["test_fp"] + m["test_fn"] + m["test_tp"] == 12  # the test split
    assert m["test_threshold"] == round(float(v1.tags["pneumo.threshold"]), METRIC_DECIMALS)
    # the temperature is fitted on validation by log loss: it cannot make that loss worse
    assert m["val_loss"] <= m["val_uncalibrated_loss"] + 1e-9
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/test_confusion_matrix_0.5.png", "plots/test_confusion_matrix_threshold.png",
            "plots/test_roc.png", "plots/test_confusion_matrix_0.5.json",
            "plots/test_reliability.png"} <= plots


def test_ensemble_of_the_two_best(promoted: dict[str, Any], searched: dict[str, Any]) -> None:
    client = searched["client"]
    p = promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn", top=2)
    v = p.version
    if v.tags["pneumo.members"] != "2":  # the rule itself: tests/test_promote_rules.py
        pytest.skip("the two tiny trials' mean validates below the better one, so promote "
                    f"keeps that one alone ({p.why or 'already registered'})")
    assert set(v.tags["pneumo.source_run_ids"].split(",")) == {
        r.info.run_id for r in _trials(searched)}
    assert "ensemble of 2 trials" in v.description
    model = mlflow.pyfunc.load_model(f"models:/acceptance/{v.version}")
    assert len(model.model_config["members"]) == 2
    # the champion rule is unchanged: the ensemble is champion only if its own validation
    # objective beats version 1's
    beats = float(v.tags["pneumo.objective_value"]) > float(
        promoted["first"].version.tags["pneumo.objective_value"])
    champion = client.get_model_version_by_alias("acceptance", "champion").version
    assert str(champion) == (str(v.version) if beats else "1")
    assert not promote(RegistryConfig(model_name="acceptance"), arch="aug_cnn", top=2).created
    # restore the champion the other tests expect
    client.set_registered_model_alias("acceptance", "champion", "1")


def test_top_k_packages_up_to_k_trials_validated_alike(searched: dict[str, Any]) -> None:
    """registry.top (3) asks for up to 3: the session's search has 2 trials (any_trial: a
    tiny trial may end as no learning, which is no candidate)."""
    from pneumo_exp.registry.selection import best_trial_runs
    runs = best_trial_runs(searched["client"], "aug_cnn", top=3, any_trial=True)
    assert [r.info.run_id for r in runs] == [r.info.run_id for r in sorted(
        _trials(searched), key=lambda r: -r.data.metrics["best_val_auc"])]


def test_promote_reads_the_pixels_not_the_file_times(searched: dict[str, Any]) -> None:
    """A dataset copied afresh (every modification time new, the same bytes) still rebuilds
    a search's validation set; an image whose pixels changed does not, and says so."""
    from pneumo_exp.errors import UserError

    data = Path(searched["cfg"].data.root)
    files = sorted(p for p in data.rglob("*") if p.is_file())
    for p in files:
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    best = searched["result"].best_run_id
    moved = promote(RegistryConfig(model_name="copied-data"), run_id=best)
    assert moved.created and moved.version.tags["pneumo.data_fingerprint"] == (
        searched["result"].data.fingerprint)

    victim = next((data / "train" / "PNEUMONIA").glob("*.jpeg"))
    original = victim.read_bytes()
    try:
        with Image.open(victim) as im:
            Image.eval(im, lambda v: 255 - v).save(victim, format="JPEG")
        with pytest.raises(UserError, match="changed since it ran"):
            promote(RegistryConfig(model_name="changed-data"), run_id=best)
    finally:
        victim.write_bytes(original)


def test_promote_chooses_the_threshold_on_the_views_it_packages(
        searched: dict[str, Any]) -> None:
    """registry.views: the validation scores that set the threshold are the mean over the
    views, and the version keeps the views, so it answers as it was validated."""
    from pneumo_exp.data.views import view_images
    from pneumo_exp.registry.selection import trial_model

    views = ["original", "crop 0.8", "shift 0 0.1"]
    best = searched["result"].best_run_id
    p = promote(RegistryConfig(model_name="viewed", views=views), run_id=best)
    model = mlflow.pyfunc.load_model(f"models:/viewed/{p.version.version}")
    assert model.model_config["views"] == views
    run = searched["client"].get_run(p.version.tags["pneumo.evaluation_run_id"])
    assert run.data.params["views"] == str(views)  # the packaged model's config, as params
    val = searched["result"].data.val
    network = trial_model(searched["client"].get_run(best))
    prob = np.mean([network.predict(view_images(val.images, v), verbose=0).ravel()
                    for v in views], axis=0)
    temperature = float(p.version.tags["pneumo.temperature"])
    assert float(p.version.tags["pneumo.threshold"]) == pytest.approx(
        choose_threshold(val.labels, apply_temperature(prob, temperature), 0.90), abs=1e-5)


def test_threshold_keeps_sensitivity_with_best_specificity_and_a_margin() -> None:
    from pneumo_exp.evaluation.calibration import logit
    from pneumo_exp.evaluation.metrics import binary_metrics

    def midway(a: float, b: float) -> float:
        return float(1 / (1 + np.exp(-(logit(a) + logit(b)) / 2)))

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = choose_threshold(y, p, 0.75)  # 3/4 caught, specificity 1: between 0.6 and 0.7
    assert t == pytest.approx(midway(0.6, 0.7))
    f = binary_metrics(y, p, t)
    assert (f["sensitivity"], f["specificity"]) == (0.75, 1.0)
    assert choose_threshold(y, p, 1.0) == pytest.approx(midway(0.3, 0.4))  # all caught
    # a confident model: the PNEUMONIA scores crowd near 1, the threshold keeps away
    sure = np.array([0.01, 0.02, 0.5, 0.9, 0.99999, 0.999995, 0.999999, 0.9999999])
    t = choose_threshold(y, sure, 0.75)
    assert 0.9 < t < 0.99999 and logit(t) == pytest.approx((logit(0.9) + logit(0.99999)) / 2)


def test_bootstrap_interval_matches_the_binomial_interval() -> None:
    """The percentile interval of accuracy holds the estimate and is as wide as the normal
    approximation of a binomial proportion, 2 x 1.96 x sqrt(p(1-p)/n), within 20%."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    ci = bootstrap_ci(y, p, 0.5, n=1000)
    accuracy = float(np.mean((p >= 0.5) == y))
    low, high = ci["accuracy"]
    assert low < accuracy < high
    expected = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / 400)
    assert (high - low) == pytest.approx(expected, rel=0.2)
    assert ci["auc"][0] < ci["auc"][1] < 1


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


def _strict_json(raw: bytes) -> Any:
    """JSON as strict clients read it: NaN and Infinity are errors."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")
    return json.loads(raw, parse_constant=refuse)


def test_predict_pyfunc_and_served_model_agree(promoted: dict[str, Any], two_images: list[Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.serving.model import images_frame

    uri = "models:/acceptance@champion"
    pyfunc = mlflow.pyfunc.load_model(uri).predict(images_frame(two_images))
    prob = pyfunc["probability"].to_numpy(float)
    assert ((prob >= 0) & (prob <= 1)).all()

    assert main(["predict", "--model", uri, *map(str, two_images), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in cli] == [str(p) for p in two_images]
    np.testing.assert_allclose([r["probability"] for r in cli], prob, atol=1e-5)

    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(p.read_bytes()).decode()] for p in [*two_images, bad]]}}).encode()
        answer = None
        for _ in range(120):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as r:
                    answer = _strict_json(r.read())["predictions"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert answer is not None, "the model server did not answer"
        np.testing.assert_allclose([a["probability"] for a in answer[:2]], prob, atol=1e-5)
        assert [a["label"] for a in answer[:2]] == list(pyfunc["label"])
        assert answer[2] == {"probability": None, "label": "unreadable",
                             "reason": "not an image file", "check": None}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreadable_file_is_labelled_not_fatal(promoted: dict[str, Any], tmp_path: Path,
                                               two_images: list[Path],
                                               capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.serving.predict import load, predict_files
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    table = predict_files(load("models:/acceptance@champion"), [bad, two_images[1]])
    assert table["label"].tolist()[0] == "unreadable" and table["probability"][0] is None
    assert table["label"].tolist()[1] in ("NORMAL", "PNEUMONIA")
    assert main(["predict", "--model", "models:/acceptance@champion", str(bad),
                 str(two_images[1]), "--format", "json"]) == 0
    rows = _strict_json(capsys.readouterr().out.encode())
    assert rows[0]["probability"] is None and rows[0]["label"] == "unreadable"


def test_predict_table_names_the_version_and_counts(promoted: dict[str, Any],
                                                    two_images: list[Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    assert main(["predict", "--model", "models:/acceptance@champion",
                 *map(str, two_images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# models:/acceptance@champion: acceptance version 1 ")
    assert "champion" in lines[0]
    assert lines[1] == "file\tprobability of PNEUMONIA\tlabel\tnote"
    assert lines[-1].startswith("# 2 files: ") and ", 0 unreadable" in lines[-1]


def test_evaluate_a_labelled_folder(promoted: dict[str, Any], searched: dict[str, Any],
                                    tmp_path: Path) -> None:
    from pneumo_exp.data.inputs import labelled_folder
    from pneumo_exp.serving.predict import evaluate
    e = evaluate("models:/acceptance@champion",
                 labelled_folder(Path(searched["cfg"].data.root) / "test"), tmp_path,
                 n_bootstrap=200)
    figures = e.figures
    v1_eval = searched["client"].get_run(
        promoted["first"].version.tags["pneumo.evaluation_run_id"]).data.metrics
    # the same model on the same test images, decoded from the files by the pyfunc model
    # (the evaluation run's metrics as logged: to METRIC_DECIMALS)
    assert round(figures["eval_auc"], METRIC_DECIMALS) == v1_eval["test_auc"]
    assert round(figures["eval_accuracy"], METRIC_DECIMALS) == v1_eval["test_accuracy"]
    test = Path(searched["cfg"].data.root) / "test"
    counts = {name: len(list((test / name).iterdir())) for name in ("NORMAL", "PNEUMONIA")}
    assert (figures["eval_NORMAL_images"], figures["eval_PNEUMONIA_images"]) == (
        counts["NORMAL"], counts["PNEUMONIA"])


def test_evaluate_verifies_the_stored_threshold_and_never_tunes_one(
        promoted: dict[str, Any], searched: dict[str, Any], tmp_path: Path) -> None:
    """A site's labelled cases are judged at the version's own threshold: the report's
    sensitivity and specificity are the counts at that threshold, whatever would suit
    the site's cases."""
    from pneumo_exp.data.inputs import labelled_folder
    from pneumo_exp.serving.model import images_frame
    from pneumo_exp.serving.predict import evaluate

    uri = "models:/acceptance@champion"
    stored = float(promoted["first"].version.tags["pneumo.threshold"])
    cases = labelled_folder(Path(searched["cfg"].data.root) / "test")
    report = evaluate(uri, cases, tmp_path, n_bootstrap=50).report
    assert report.threshold == pytest.approx(stored, abs=1e-6)  # the tag: 6 decimals
    called = mlflow.pyfunc.load_model(uri).predict(
        images_frame(cases.files))["probability"].to_numpy(float) >= report.threshold
    sick = cases.labels == 1
    assert (report.sensitivity.hits, report.sensitivity.total) == (
        int(called[sick].sum()), int(sick.sum()))
    assert (report.specificity.hits, report.specificity.total) == (
        int((~called[~sick]).sum()), int((~sick).sum()))


def test_evaluate_names_the_folder_and_counts(promoted: dict[str, Any], searched: dict[str, Any],
                                              capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    root = Path(searched["cfg"].data.root)  # a dataset root: its test split is evaluated
    assert main(["evaluate", "--model", "models:/acceptance@champion", "--data",
                 str(root), "--out", str(root / "reports")]) == 0
    out = capsys.readouterr().out.splitlines()
    n = {name: len(list((root / "test" / name).iterdir())) for name in ("NORMAL", "PNEUMONIA")}
    assert out[0].endswith(f"on {root / 'test'} ({n['NORMAL']} NORMAL, "
                           f"{n['PNEUMONIA']} PNEUMONIA):"), out[0]
    assert out[-1].startswith("  site report: ") and "Verdict: " in out[-1]
    html = next((root / "reports").glob("*.html")).read_text()
    assert "data:image/png;base64," in html and "Clopper-Pearson" in html
    card = searched["client"].get_model_version("acceptance", "1").description
    assert "**Site evaluations**" in card and f"{root / 'test'}: sensitivity" in card


def test_models_lists_the_versions(promoted: dict[str, Any], searched: dict[str, Any],
                                   capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "version", "aliases"]
    rows = [line.split() for line in out[1:] if line.startswith("acceptance ")]
    assert {r[1] for r in rows} >= {"1", "2"}
    v1 = next(r for r in rows if r[1] == "1")
    assert "champion" in v1[2].split(",")
