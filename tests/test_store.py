"""What the store holds (pneumo-exp runs, models) and deleting one search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_folder_dataset

from pneumo_exp.cli import main
from pneumo_exp.config import RegistryConfig, load_config


def test_runs_lists_searches_newest_first(searched: dict[str, Any],
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["started", "arch", "kind", "name"]
    name = f"search-{searched['result'].name}"
    row = next(line for line in lines if name in line)
    assert "aug_cnn" in row and "search" in row and "2/2" in row
    assert searched["result"].parent_run_id in row


def test_delete_search_refuses_while_a_version_uses_it(searched: dict[str, Any],
                                                       capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.registry.promote import promote
    promote(RegistryConfig(model_name="kept"), arch="aug_cnn")
    assert main(["delete-search", searched["result"].name, "--yes"]) == 2
    err = capsys.readouterr().err
    assert "kept version 1" in err and "packages its trials" in err
    run = searched["client"].get_run(searched["result"].parent_run_id)
    assert run.info.lifecycle_stage == "active"


@pytest.mark.slow
def test_delete_search_takes_its_runs_and_tuner_state(workdir: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.search.run import run_search
    from pneumo_exp.tracking.store import connect

    data = make_folder_dataset(workdir / "data")
    overrides = {"search.max_trials": 1, "train.epochs": 1, "data.image_size": 32,
                 "data.root": str(data), "search.tuner": "random",
                 "space.conv_blocks": 2}
    gone = run_search(load_config("aug_cnn", overrides), name="gone", verbose=0)
    kept = run_search(load_config("aug_cnn", overrides), name="stays", verbose=0)
    state = workdir / ".pneumo" / "tuner" / "aug_cnn" / "gone"
    assert state.is_dir()
    assert main(["delete-search", "gone"]) == 2  # no terminal to confirm: needs --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["delete-search", "gone", "--yes"]) == 0
    client = connect()
    for run_id in (gone.parent_run_id, gone.best_run_id):
        assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert not state.exists()
    assert client.get_run(kept.parent_run_id).info.lifecycle_stage == "active"
    assert main(["delete-search", "gone", "--yes"]) == 2
    assert "no search named 'gone'" in capsys.readouterr().err


class _RacedClient:
    """An MlflowClient whose tag writes lose a race: another process wrote the tag first
    (`wrote=True`), or nothing was written (`wrote=False`); either way the insert fails."""

    def __init__(self, uri: str, wrote: bool) -> None:
        from mlflow import MlflowClient
        self._client, self._wrote = MlflowClient(uri), wrote

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def set_experiment_tag(self, experiment: str, key: str, value: str) -> None:
        import mlflow
        if self._wrote:
            self._client.set_experiment_tag(experiment, key, value)
        raise mlflow.exceptions.MlflowException("duplicate key value violates unique constraint")


def test_experiment_tags_written_by_a_concurrent_process_are_not_an_error(
        tmp_path: Path) -> None:
    import mlflow

    from pneumo_exp.tracking.store import EXPERIMENT_KIND, experiment_id
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = experiment_id(_RacedClient(uri, wrote=True), "raced")
    tags = mlflow.MlflowClient(uri).get_experiment(experiment).tags
    assert EXPERIMENT_KIND.items() <= tags.items()
    with pytest.raises(mlflow.exceptions.MlflowException):  # a failure that left no tag
        experiment_id(_RacedClient(uri, wrote=False), "raced-too")


def test_the_ui_link_opens_the_full_fidelity_trials_best_first(workdir: Path) -> None:
    """The link `make ui` and every search print names a view the experiment keeps: its
    full-fidelity trials, best objective first, the clinical figures as first columns."""
    import json
    from urllib.parse import parse_qs, urlparse

    from pneumo_exp.tracking.store import VIEW_TAG_PREFIX, connect, experiment_id, ui_url

    client = connect()
    experiment = experiment_id(client, "pneumo-exp/aug_cnn")
    link = urlparse(ui_url("127.0.0.1", 5000, experiment))
    assert link.fragment.startswith(f"/experiments/{experiment}/runs")
    key = parse_qs(link.fragment.split("?", 1)[1])["viewStateShareKey"][0]
    view = json.loads(client.get_experiment(experiment).tags[VIEW_TAG_PREFIX + key])
    state = json.loads(view["state"])
    assert state["searchFilter"] == "tags.`pneumo.fidelity` = 'full'"
    assert state["orderByKey"] == "metrics.`best_val_auc`" and state["orderByAsc"] is False
    assert state["selectedColumns"][2:6] == [
        "metrics.`best_val_sensitivity`", "metrics.`best_val_specificity`",
        "metrics.`best_val_spec_at_sens`", "metrics.`best_val_auc`"]
