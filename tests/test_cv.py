"""k-fold cross-validation: folds grouped by patient, one nested run per fold, mean and std."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pneumo_exp.config import load_config
from pneumo_exp.errors import UserError
from pneumo_exp.evaluation.metrics import binary_metrics
from pneumo_exp.search.cv import run_cv
from pneumo_exp.text import literal
from pneumo_exp.tracking.names import METRIC_DECIMALS, VAL_PREDICTIONS

pytestmark = pytest.mark.slow  # cross-validations that train


@pytest.fixture(scope="module")
def regularized_cv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import make_folder_dataset
    root = tmp_path_factory.mktemp("cv")
    data = make_folder_dataset(root / "chest_xray", {"train": (18, 24), "val": (2, 2)},
                               per_patient=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = load_config("regularized", {"data.root": str(data), "data.image_size": 16,
                                          "train.epochs": 2,
                                          "search.sensitivity_target": 0.6})
        result = run_cv(cfg, folds=3, verbose=0)
        return result, MlflowClient(mlflow.get_tracking_uri())


def test_parent_and_fold_runs(regularized_cv: Any) -> None:
    result, client = regularized_cv
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pneumo.role"] == "cv"
    assert parent.data.params["cv.folds"] == "3" and parent.data.params["hp.l2"] == "0.01"
    m = parent.data.metrics
    for name in ("accuracy", "auc", "loss"):
        values = [f[f"best_val_{name}"] for f in result.fold_figures]
        assert m[f"cv_val_{name}_mean"] == pytest.approx(  # logged to METRIC_DECIMALS
            sum(values) / 3, abs=0.5 * 10**-METRIC_DECIMALS + 1e-12)
        assert m[f"cv_val_{name}_std"] >= 0
    assert m["best_val_auc"] == m["cv_val_auc_mean"] and m["n_trials"] == 3
    folds = client.search_runs([result.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(r.data.tags["pneumo.fold"] for r in folds) == ["0", "1", "2"]
    for run in folds:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/val_confusion_matrix.png"} <= plots


def test_folds_read_the_configured_sensitivity_target(regularized_cv: Any) -> None:
    """A fold's specificity at sensitivity is at search.sensitivity_target (0.6), not 0.95."""
    result, client = regularized_cv
    folds = client.search_runs([result.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    for run in folds:
        saved = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{VAL_PREDICTIONS}")
        labels, prob = np.array(saved["labels"]), np.array(saved["probabilities"])
        at = binary_metrics(labels, prob, sensitivity_target=0.6)["spec_at_sens"]
        assert run.data.metrics["best_val_spec_at_sens"] == pytest.approx(at, abs=1e-4)


def test_no_patient_in_two_folds(regularized_cv: Any) -> None:
    result, _ = regularized_cv
    assert len(result.fold_groups) == 3
    for a, b in combinations(result.fold_groups, 2):
        assert not set(a) & set(b)
    assert sum(len(g) for g in result.fold_groups) == 6 + 8  # every patient validated once


def test_from_best_uses_the_latest_search(searched: dict[str, Any]) -> None:
    """The best trial of the newest finished search (other tests of the session may have
    searched after the session's own search)."""
    client = searched["client"]
    latest = client.search_runs(
        [searched["result"].experiment_id], "tags.`pneumo.role` = 'search' and "
        "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])[0]
    best_run_id = latest.data.tags["best_run_id"]
    best = client.get_run(best_run_id).data.params
    cfg = load_config("aug_cnn", {**{"data.root": searched["cfg"].data.root},
                                  "data.image_size": 48, "train.epochs": 1})
    result = run_cv(cfg, folds=2, source="best", verbose=0)
    assert {k: str(v) for k, v in result.hyperparameters.items()} == {
        k: v for k, v in best.items() if not k.startswith("tuner/")}
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["cv.from_run"] == best_run_id


def test_from_best_without_a_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_folder_dataset
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = make_folder_dataset(tmp_path / "d", {"train": (8, 8)})
    cfg = load_config("cnn", {"data.root": str(data), "data.image_size": 32})
    with pytest.raises(UserError, match="make search ARCH=cnn"):
        run_cv(cfg, folds=2, source="best")


def test_literal() -> None:
    assert [literal(x) for x in ("32", "1e-05", "0.5", "True", "none", "adam")] == [
        32, 1e-05, 0.5, True, "none", "adam"]
