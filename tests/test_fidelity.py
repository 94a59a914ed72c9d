"""Trials decide and the clock caps: a multi-fidelity search screens configurations cheaply
and trains the best at full fidelity; a time budget cuts a search, which then resumes to
the very trials an uncut search runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import make_folder_dataset
from mlflow.tracking import MlflowClient

from pneumo_exp.config import load_config
from pneumo_exp.search.callbacks import Deadline, TimeBudgetSpent
from pneumo_exp.search.run import run_search

TINY = {"train.epochs": 2, "search.tuner": "random", "data.image_size": 48,
        "train.batch_size": 16, "space.conv_blocks": 2, "tracking.gradcam_images": 0}


def _runs(client: MlflowClient, result: Any) -> dict[str, Any]:
    """The latest run of each trial, by trial number."""
    runs = client.search_runs([result.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    return {r.data.tags["pneumo.trial_id"]: r for r in runs}


@pytest.mark.slow
def test_screening_then_the_best_at_full_fidelity(workdir: Path) -> None:
    data = make_folder_dataset(workdir / "d")
    cfg = load_config("aug_cnn", {**TINY, "data.root": str(data), "search.max_trials": 5,
                                  "search.screen_trials": 3, "search.full_trials": 2,
                                  "search.screen_image_size": 32,
                                  "search.screen_fraction": 0.5, "search.screen_epochs": 1})
    result = run_search(cfg, verbose=0)
    client = MlflowClient()
    runs = _runs(client, result)
    assert sorted(runs, key=int) == ["0", "1", "2", "3", "4"]
    fidelity = {t: r.data.tags["pneumo.fidelity"] for t, r in runs.items()}
    assert fidelity == {"0": "screen", "1": "screen", "2": "screen", "3": "full", "4": "full"}
    def logged_models(run: Any) -> list[Any]:
        return mlflow.search_logged_models(
            experiment_ids=[result.experiment_id], output_format="list",
            filter_string=f"source_run_id = '{run.info.run_id}'")

    for t in ("0", "1", "2"):
        assert runs[t].data.params["fidelity.image_size"] == "32"
        assert runs[t].data.params["fidelity.epochs"] == "1"
        assert runs[t].data.tags["pneumo.candidate"] == "false"
        assert not logged_models(runs[t])  # screened: not a candidate, no model
        assert runs[t].data.tags["pneumo.checkpoint"].startswith("none")
        assert "keeps no checkpoint" in runs[t].data.tags["mlflow.note.content"]
    assert runs["3"].data.params["fidelity.image_size"] == "48"
    assert logged_models(runs["3"]) and logged_models(runs["4"])
    # the full stage trained the two best screened configurations, best first
    screened = sorted(("0", "1", "2"), key=lambda t: -runs[t].data.metrics["best_val_auc"])

    def hps(run: Any) -> dict[str, str]:
        return {k: v for k, v in run.data.params.items()
                if not k.startswith(("tuner/", "fidelity."))}
    assert [hps(runs["3"]), hps(runs["4"])] == [hps(runs[screened[0]]), hps(runs[screened[1]])]
    assert result.best_trial_id in ("3", "4")  # the best is a full-fidelity trial
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["search.trials_planned"] == "5"
    assert parent.data.tags["search.split"] == "3 screened + 2 full"
    assert parent.data.tags["search.trials_completed"] == "5"
    assert parent.data.tags["search.trials_cut"] == "0"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/importance.png", "plots/parallel_coordinates.png",
            "plots/landscape.png", "plots/search_progress.png"} <= artifacts


def test_the_deadline_cuts_or_finishes_a_trial() -> None:
    import time

    class Model:
        stop_training = False
    cut = Deadline(time.time() - 1)
    cut.set_model(Model())
    with pytest.raises(TimeBudgetSpent) as e:
        cut.on_epoch_end(2)
    assert e.value.epochs == 3
    finish = Deadline(time.time() - 1, finish_trial=True)  # a distributed search's worker
    finish.set_model(Model())
    finish.on_epoch_end(0)
    assert finish.model.stop_training
    Deadline(time.time() + 60).on_epoch_end(0)  # before the deadline: nothing


@pytest.mark.slow
def test_a_cut_search_resumes_to_what_an_uncut_one_finds(workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_folder_dataset(workdir / "d")
    overrides = {**TINY, "data.root": str(data), "search.max_trials": 2,
                 "search.time_budget_min": 60.0}
    cfg = load_config("aug_cnn", overrides)
    calls = {"n": 0}
    original = Deadline.on_epoch_end

    def cut_the_first_epoch(self: Deadline, epoch: int, logs: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # the budget runs out during trial 0's first epoch
            raise TimeBudgetSpent(epoch + 1)
        original(self, epoch, logs)

    monkeypatch.setattr(Deadline, "on_epoch_end", cut_the_first_epoch)
    cut = run_search(cfg, name="capped", verbose=0)
    client = MlflowClient()
    assert cut.trials["cut_trials"] == 1 and cut.trials["completed_trials"] == 0
    run = _runs(client, cut)["0"]
    assert run.info.status == "KILLED"
    assert run.data.tags["pneumo.trial_status"].startswith("cut by the time budget after 1")
    assert client.get_run(cut.parent_run_id).data.tags["search.trials_cut"] == "1"
    monkeypatch.setattr(Deadline, "on_epoch_end", original)

    resumed = run_search(cfg, name="capped", verbose=0)  # the budget no longer runs out
    assert resumed.trials["completed_trials"] == 2 and resumed.trials["cut_trials"] == 0
    uncut = run_search(cfg, name="uncut", verbose=0)
    a, b = _runs(client, resumed), _runs(client, uncut)
    for trial in ("0", "1"):
        assert a[trial].info.status == b[trial].info.status == "FINISHED"
        assert a[trial].data.metrics["best_val_auc"] == b[trial].data.metrics["best_val_auc"]
        assert a[trial].data.params == b[trial].data.params


def test_a_bayesian_search_cut_after_its_proposals_began_resumes_to_the_uncut_trials(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's batches come in an order of its own, and the Gaussian process's proposals
    go on with their random starts where the cut left them: resumed after trial 2 of 4, the
    search trains what an uncut one trains."""
    data = make_folder_dataset(workdir / "d")
    cfg = load_config("aug_cnn", {**TINY, "data.root": str(data), "train.epochs": 1,
                                  "search.tuner": "bayesian", "search.num_initial_points": 1,
                                  "search.max_trials": 4, "search.time_budget_min": 60.0})
    calls = {"n": 0}
    original = Deadline.on_epoch_end

    def cut_trial_2(self: Deadline, epoch: int, logs: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # trial 2: the second proposal of the Gaussian process
            raise TimeBudgetSpent(epoch + 1)
        original(self, epoch, logs)

    monkeypatch.setattr(Deadline, "on_epoch_end", cut_trial_2)
    cut = run_search(cfg, name="capped", verbose=0)
    assert cut.trials["completed_trials"] == 2 and cut.trials["cut_trials"] == 1
    monkeypatch.setattr(Deadline, "on_epoch_end", original)
    resumed = run_search(cfg, name="capped", verbose=0)
    uncut = run_search(cfg, name="uncut", verbose=0)
    client = MlflowClient()
    a, b = _runs(client, resumed), _runs(client, uncut)
    assert sorted(a) == sorted(b) == ["0", "1", "2", "3"]
    for trial in a:
        assert a[trial].data.params == b[trial].data.params, trial
        assert a[trial].data.metrics["best_val_auc"] == b[trial].data.metrics["best_val_auc"]
