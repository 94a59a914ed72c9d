"""End to end: a 2-trial search on a tiny generated dataset, and what it leaves in MLflow."""

from __future__ import annotations

import subprocess
from typing import Any

import mlflow
import numpy as np
import pytest
from conftest import OVERRIDES
from mlflow.tracking import MlflowClient

from pneumo_exp.config import REPO_ROOT, load_config
from pneumo_exp.errors import ConfigError
from pneumo_exp.search.run import SearchResult, run_search


def _children(client: MlflowClient, result: SearchResult) -> list[Any]:
    return client.search_runs([result.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")


def test_store_is_local_sqlite_under_mlruns(searched: dict[str, Any]) -> None:
    assert (searched["root"] / "mlruns" / "mlflow.db").is_file()
    assert mlflow.get_tracking_uri().startswith("sqlite:///")


def test_parent_run(searched: dict[str, Any]) -> None:
    client, result = searched["client"], searched["result"]
    exp = client.get_experiment(result.experiment_id)
    assert exp.name == "pneumo-exp/aug_cnn"
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pneumo.role"] == "search"
    assert parent.data.tags["pneumo.data_fingerprint"] == result.data.fingerprint
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert parent.data.tags["mlflow.source.git.commit"] == head
    p = parent.data.params
    assert p["search.tuner"] == "random" and p["data.image_size"] == "48"
    assert int(p["data.train_size"]) + int(p["data.val_size"]) == 92
    assert int(p["data.train_NORMAL"]) + int(p["data.val_NORMAL"]) == 40
    assert p["data.skipped_files"] == "3"
    skipped = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/data/skipped_files.tsv")
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1]
                  for line in skipped.splitlines()) == sorted(searched["bad"])
    m = parent.data.metrics
    assert m["n_trials"] == 2 and m["n_completed_trials"] == 2 and m["wall_time_s"] > 0
    assert 0 <= m["best_val_auc"] <= 1 and m["best_val_loss"] > 0
    assert parent.data.tags["best_run_id"] == result.best_run_id
    contexts = {t.value for d in parent.inputs.dataset_inputs for t in d.tags}
    assert contexts == {"train", "val"}
    datasets = {d.dataset.name: d.dataset for d in parent.inputs.dataset_inputs}
    assert set(datasets) == {"chest_xray-train", "chest_xray-val"}
    for dataset in datasets.values():  # what MLflow's dataset API computes from the images
        assert dataset.source_type == "local" and len(dataset.digest) == 8
        assert "features_shape" in dataset.profile and "tensor" in dataset.schema


def test_two_nested_trial_runs(searched: dict[str, Any]) -> None:
    client, result = searched["client"], searched["result"]
    children = _children(client, result)
    assert len(children) == 2
    assert sorted(r.data.tags["pneumo.trial_id"] for r in children) == ["0", "1"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"filters_1", "dense_units", "learning_rate", "optimizer", "rotation",
                "class_weight"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [h.step for h in history] == [0, 1]
        for key in ("loss", "accuracy", "auc", "val_accuracy", "val_auc"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 2
        m = run.data.metrics
        assert m["best_val_tn"] + m["best_val_fp"] + m["best_val_fn"] + m["best_val_tp"] == len(
            result.data.val)
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/val_confusion_matrix.png", "plots/val_roc.png",
                "plots/val_confusion_matrix.json"} <= plots


def test_logged_model_loads_and_predicts_probabilities(searched: dict[str, Any]) -> None:
    result = searched["result"]
    models = mlflow.search_logged_models(experiment_ids=[result.experiment_id],
                                         filter_string=f"source_run_id = '{result.best_run_id}'",
                                         output_format="list")
    assert len(models) == 1
    model = mlflow.pyfunc.load_model(models[0].model_uri)
    x = result.data.val.images[:5].astype(np.float32)
    prob = np.asarray(model.predict(x)).ravel()
    assert prob.shape == (5,) and ((prob >= 0) & (prob <= 1)).all()
    assert model.metadata.signature is not None


def test_same_command_again_adds_no_runs(searched: dict[str, Any],
                                         caplog: pytest.LogCaptureFixture) -> None:
    client, result = searched["client"], searched["result"]
    caplog.set_level("INFO")
    again = run_search(searched["cfg"], verbose=0)
    assert again.parent_run_id == result.parent_run_id
    assert again.data.from_cache
    assert len(_children(client, result)) == 2
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    assert "already ran its 2 trials" in caplog.text


def test_raising_max_trials_extends_a_finished_search(workdir: Any) -> None:
    """A search that does not screen, finished at one trial: the same command with
    MAX_TRIALS=2 is the same search, and runs one trial more under the same parent."""
    from conftest import make_folder_dataset

    root = make_folder_dataset(workdir / "chest_xray")
    settings = {**OVERRIDES, "data.root": str(root), "train.epochs": 1,
                "search.screen_trials": 0, "tracking.gradcam_images": 0}
    first = run_search(load_config("aug_cnn", {**settings, "search.max_trials": 1}), verbose=0)
    more = run_search(load_config("aug_cnn", {**settings, "search.max_trials": 2}), verbose=0)
    assert (more.name, more.parent_run_id) == (first.name, first.parent_run_id)
    client = MlflowClient()
    trials = [r for r in _children(client, more) if r.data.tags.get("pneumo.role") == "trial"]
    assert len(trials) == 2


def test_unknown_space_key_is_a_config_error(searched: dict[str, Any]) -> None:
    cfg = load_config("aug_cnn", {**OVERRIDES, "data.root": searched["cfg"].data.root,
                                  "space.dropuot": 0.2})
    with pytest.raises(ConfigError, match=r"space.dropuot.*dropout"):
        run_search(cfg, verbose=0)


def test_first_trial_is_the_configured_initial_point(searched: dict[str, Any]) -> None:
    """experiments/aug_cnn.yaml starts from its robust point (the study's configuration lies
    outside its space: default_first is false)."""
    client, result = searched["client"], searched["result"]
    (first,) = [r for r in _children(client, result) if r.data.tags["pneumo.trial_id"] == "0"]
    (point,) = searched["cfg"].search.initial_points
    assert not searched["cfg"].search.default_first
    assert {k: first.data.params[k] for k in point} == {k: str(v) for k, v in point.items()}
    assert (first.data.params["batch_norm"], first.data.params["head"]) == ("True",
                                                                           "global_avg")


def test_trials_record_how_they_ended(searched: dict[str, Any]) -> None:
    client, result = searched["client"], searched["result"]
    for run in _children(client, result):
        status = run.data.tags["pneumo.trial_status"]
        assert status == "completed" or status.startswith("no learning"), status
        assert run.data.metrics["epochs"] == 2
    parent = client.get_run(result.parent_run_id)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.json", "trials.txt"} <= artifacts
    assert "plots/search_progress.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert [row["trial"] for row in result.table] == ["0", "1"]


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband"])
def test_other_tuners_run_and_track(searched: dict[str, Any], tuner: str) -> None:
    cfg = load_config("aug_cnn", {**OVERRIDES, "data.root": searched["cfg"].data.root,
                                  "search.tuner": tuner, "train.epochs": 2,
                                  "search.hyperband_factor": 2})
    result = run_search(cfg, verbose=0)
    children = _children(searched["client"], result)
    assert result.trials["completed_trials"] == len(children) == 2
    assert all(r.info.status == "FINISHED" for r in children)
    assert result.best_run_id in {r.info.run_id for r in children}


def test_trials_run_with_the_long_lived_objects_frozen(workdir, tiny_dataset,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras Tuner collects garbage four times a trial; the objects the whole search keeps
    (TensorFlow, Keras, MLflow, the data) are frozen out of those passes while the stages
    run, and thawed after; what a trial leaves is still collected."""
    import gc

    import pneumo_exp.search.run as search_run

    seen: list[tuple[int, int]] = []

    def stage(*args: Any, **kwargs: Any) -> None:
        cycle: list[Any] = []
        cycle.append(cycle)  # garbage of a trial, only the cyclic collector frees it
        del cycle
        seen.append((gc.get_freeze_count(), gc.collect()))
        raise RuntimeError("stop after the check")

    monkeypatch.setattr(search_run, "_run_stage", stage)
    cfg = load_config("aug_cnn", {**OVERRIDES, "data.root": str(tiny_dataset)})
    with pytest.raises(RuntimeError, match="stop after the check"):
        run_search(cfg, verbose=0)
    frozen, collected = seen[0]
    assert frozen > 100_000 and collected >= 1
    assert gc.get_freeze_count() == 0
