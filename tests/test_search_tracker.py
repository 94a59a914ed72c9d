"""The search's MLflow bookkeeping (tracking.search_tracker.SearchTracker), without training:
trial rows, the best so far, the time left, the trials table, the summary, and resuming."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pneumo_exp.config import load_config
from pneumo_exp.data.dataset import TrainingData
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.sources import SplitData
from pneumo_exp.tracking.names import (
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_DATA,
    TAG_STATUS,
    VAL_PREDICTIONS,
)
from pneumo_exp.tracking.search_record import format_table, trials_table
from pneumo_exp.tracking.search_tracker import SearchTracker


def _data(root: Path) -> TrainingData:
    images = np.zeros((6, 8, 8, 1), np.uint8)
    names = np.array([f"train/x/{i}.png" for i in range(6)])
    part = LabeledImages(images, np.array([0, 0, 0, 1, 1, 1]), names, names)
    split = SplitData(part, [("train/NORMAL/bad.jpeg", "not an image file")], "f00d", True, 0.0)
    return TrainingData(root=root, train=part, val=part, loads={"train": split})


def _trial(tracker: SearchTracker, trial_id: str, auc: float, curve: list[float],
           status: str, params: dict[str, object],
           predictions: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    with tracker.trial_run(trial_id, params, "chief") as run_id:
        if predictions is not None:  # as tracking.trials.log_classifier keeps them
            mlflow.log_dict({"labels": predictions[0].tolist(),
                             "probabilities": predictions[1].tolist()}, VAL_PREDICTIONS)
        for step, value in enumerate(curve):
            mlflow.log_metric("val_auc", value, step=step)
        mlflow.log_metrics({"best_val_auc": auc, "best_val_sensitivity": 0.9,
                            "best_val_specificity": 0.8, "best_val_loss": 0.3,
                            "epochs": float(len(curve))})
        tracker.set_trial_status(run_id, status)
    return run_id


@pytest.fixture
def tracker(workdir: Path) -> SearchTracker:
    cfg = load_config("aug_cnn", {"search.max_trials": 4, "search.screen_trials": 0,
                                  "data.root": str(workdir)})
    t = SearchTracker(cfg, "bookkeeping", workdir / ".pneumo" / "tuner" / "bookkeeping",
                      key_params=("filters_1",))
    t.begin(_data(workdir), {"class": "TrackedTuner"})
    return t


def test_rows_best_so_far_and_table(tracker: SearchTracker) -> None:
    _trial(tracker, "0", 0.91, [0.8, 0.91], "completed", {"dropout": 0.3, "lr": 0.001})
    best = _trial(tracker, "1", 0.95, [0.9, 0.95, 0.94], "early stopped after 3 epochs",
                  {"dropout": 0.3, "lr": 0.002})
    rows = tracker.rows()
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert rows[1]["val_auc"] == 0.95 and rows[1]["epochs"] == 3 and rows[1]["finished"]
    assert tracker.best_so_far() == ("1", 0.95)
    assert tracker.trial_run_id("1") == best
    assert tracker.objective_curves() == [[0.8, 0.91], [0.9, 0.95, 0.94]]
    table = trials_table(rows)
    assert [t["changed"] for t in table] == ["lr=0.001", "lr=0.002"]  # dropout is the same
    text = format_table(table)
    assert text.splitlines()[0].split()[:3] == ["trial", "val", "AUC"]
    assert "0.9500" in text and "early stopped after 3 epochs" in text


def test_remaining_time_is_the_mean_trial_for_each_trial_left(tracker: SearchTracker) -> None:
    _trial(tracker, "0", 0.9, [0.9], "completed", {})
    _trial(tracker, "1", 0.8, [0.8], "completed", {})
    seconds = [r["seconds"] for r in tracker.rows()]
    estimate = tracker.remaining_estimate(None)
    assert estimate == pytest.approx(2 * sum(seconds) / 2)  # 4 planned, 2 done
    assert tracker.remaining_estimate(time.time() + 1e-3) <= 1e-3  # capped by the deadline


def test_a_failed_trial_is_not_the_best(tracker: SearchTracker) -> None:
    _trial(tracker, "0", 0.7, [0.7], "completed", {})
    with pytest.raises(RuntimeError), tracker.trial_run("1", {}, "chief"):
        mlflow.log_metric("best_val_auc", 0.99)
        raise RuntimeError("diverged")
    rows = tracker.rows()
    assert rows[1]["status"] == "failed" and not rows[1]["finished"]
    assert tracker.best_so_far() == ("0", 0.7)


def test_end_logs_the_summary_and_the_best_run(tracker: SearchTracker) -> None:
    run_id = _trial(tracker, "0", 0.9, [0.9], "completed", {})
    tracker.end(("0", run_id), {"trials": 1, "completed_trials": 1, "failed_trials": 0})
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_BEST_TRIAL] == "0" and parent.data.tags[TAG_BEST_RUN] == run_id
    assert parent.data.tags[TAG_DATA] == _data(Path()).fingerprint
    m = parent.data.metrics
    assert m["best_val_auc"] == 0.9 and m["n_trials"] == 1 and m["wall_time_s"] > 0
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)}
    assert {"trials.json", "trials.txt", "config.yaml"} <= artifacts


def test_resume_reopens_the_parent_and_closes_a_dead_trial(tracker: SearchTracker,
                                                          workdir: Path) -> None:
    _trial(tracker, "0", 0.9, [0.9], "completed", {})
    dead = tracker.client.create_run(
        tracker.experiment_id, run_name="trial-1",
        tags={"mlflow.parentRunId": tracker.parent_run_id, "pneumo.trial_id": "1"})
    tracker.end(None, {"trials": 2}, status="KILLED")

    again = SearchTracker(tracker.cfg, "bookkeeping",
                          workdir / ".pneumo" / "tuner" / "bookkeeping")
    assert again.begin(_data(workdir), {}) == tracker.parent_run_id and again.resumed
    assert tracker.client.get_run(dead.info.run_id).info.status == "KILLED"
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "RUNNING"
    assert [r["trial"] for r in again.rows()] == ["0", "1"]
    assert again.rows()[1]["status"] == "killed"
    assert again.elapsed() >= tracker.client.get_run(
        tracker.parent_run_id).data.metrics["wall_time_s"]
    again.forget()
    fresh = SearchTracker(tracker.cfg, "bookkeeping",
                          workdir / ".pneumo" / "tuner" / "bookkeeping")
    assert fresh.begin(_data(workdir), {}) != tracker.parent_run_id and not fresh.resumed


def test_status_tag_is_cut_to_mlflow_size(tracker: SearchTracker) -> None:
    run_id = _trial(tracker, "0", 0.9, [0.9], "x" * 900, {})
    assert len(tracker.client.get_run(run_id).data.tags[TAG_STATUS]) == 500


def test_compare_two_searches(tracker: SearchTracker, workdir: Path) -> None:
    from pneumo_exp.tracking.compare import compare_figure, compare_table, summarize

    for trial, (auc, curve) in enumerate([(0.90, [0.90]), (0.95, [0.9, 0.95])]):
        _trial(tracker, str(trial), auc, curve, "completed", {"lr": 0.001 * (trial + 1)})
    tracker.end(None, {"trials": 2})
    other = SearchTracker(tracker.cfg, "other", workdir / ".pneumo" / "tuner" / "other")
    other.begin(_data(workdir), {})
    _trial(other, "0", 0.97, [0.97], "completed", {"lr": 0.01})
    other.end(None, {"trials": 1})
    client = tracker.client
    searches = [summarize(client, client.get_run(t.parent_run_id)) for t in (tracker, other)]
    assert [s.best["trial"] for s in searches] == ["1", "0"]
    assert [b for _, _, b in searches[0].curve()] == [0.90, 0.95]  # best so far
    table = compare_table(searches).splitlines()
    assert table[1].startswith("bookkeeping") and "0.9500" in table[1]
    assert table[2].startswith("other") and "0.9700" in table[2]
    fig = compare_figure(searches)
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[1].get_lines()) == 2


def _scores(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(signal * (2 * labels - 1) + rng.normal(0, 1, len(labels)))))


def test_noise_marks_and_compare_verdicts(tracker: SearchTracker, workdir: Path) -> None:
    """Best trials a hair apart are within the validation noise; a good one and a guess are
    not. The table marks the near-best trials, and compare says which pairs differ."""
    from pneumo_exp.evaluation.noise import Scored, difference
    from pneumo_exp.tracking.compare import noise_verdicts, summarize

    rng = np.random.default_rng(0)
    labels = np.array([0] * 140 + [1] * 400)
    good = _scores(rng, labels, 2.0)
    near = np.clip(good + rng.normal(0, 0.01, len(good)), 0, 1)  # the same ranking, nearly
    guess = rng.uniform(0, 1, len(labels))
    figures = {name: difference("val_auc", Scored(labels, p), Scored(labels, good), True).a
               for name, p in (("good", good), ("near", near), ("guess", guess))}
    for trial, name, p in (("0", "good", good), ("1", "near", near), ("2", "guess", guess)):
        _trial(tracker, trial, figures[name], [figures[name]], "completed",
               {"lr": trial}, (labels, p))
    vs_best = tracker.vs_best()
    best = max(("0", "1"), key=lambda t: figures[{"0": "good", "1": "near"}[t]])
    assert vs_best[best] == "best"
    assert vs_best[{"0": "1", "1": "0"}[best]] == "≈ best" and vs_best.get("2", "") == ""
    assert "within the validation noise of the best" in format_table(tracker.table())
    tracker.end(None, {"trials": 3})
    searches = [summarize(tracker.client, tracker.client.get_run(tracker.parent_run_id))]
    for name, p in (("alike", near), ("guessing", guess)):
        other = SearchTracker(tracker.cfg, name, workdir / ".pneumo" / "tuner" / name)
        other.begin(_data(workdir), {})
        _trial(other, "0", figures["near" if name == "alike" else "guess"], [0.5],
               "completed", {"lr": 1}, (labels, p))
        other.end(None, {"trials": 1})
        searches.append(summarize(tracker.client, tracker.client.get_run(other.parent_run_id)))
    alike, guessing = noise_verdicts(searches)
    assert "vs alike" in alike and "within the validation noise" in alike and "paired" in alike
    assert "vs guessing" in guessing and "more than the validation noise" in guessing


def test_importance_finds_what_moved_the_objective() -> None:
    from pneumo_exp.tracking.importance import MEANINGFUL, estimate

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        lr, dropout = 10 ** rng.uniform(-4, -2), float(rng.choice([0.1, 0.3, 0.5]))
        rows.append({"finished": True, "val_auc": 0.99 - 0.02 * (np.log10(lr) + 3) ** 2
                     + rng.normal(0, 0.001), "params": {
                         "learning_rate": str(lr), "dropout": str(dropout),
                         "intensity": str(rng.choice(["equalize", "standardize"])),
                         "conv_blocks": "4", "tuner/trial_id": "x"}})
    imp = estimate(rows, "val_auc", "max", "screen")
    assert next(iter(imp.shares)) == "learning_rate" and imp.shares["learning_rate"] > 0.8
    assert set(imp.shares) == {"learning_rate", "dropout", "intensity"}  # conv_blocks fixed
    assert not imp.caveat
    few = estimate(rows[:MEANINGFUL - 1], "val_auc", "max", "screen")
    assert few is not None and "too few" in few.caveat
    assert estimate(rows[:2], "val_auc", "max", "screen") is None


def test_promote_can_take_one_search_s_trials(tracker: SearchTracker, workdir: Path) -> None:
    from pneumo_exp.registry.selection import best_trial_runs

    _trial(tracker, "0", 0.99, [0.99], "completed", {"lr": 1})
    other = SearchTracker(tracker.cfg, "other", workdir / ".pneumo" / "tuner" / "other")
    other.begin(_data(workdir), {})
    mine = [_trial(other, str(t), auc, [auc], "completed", {"lr": t})
            for t, auc in enumerate((0.90, 0.95))]
    every = best_trial_runs(tracker.client, "aug_cnn", top=3, any_trial=True)
    assert every[0].data.metrics["best_val_auc"] == 0.99  # the best of the experiment
    only = best_trial_runs(tracker.client, "aug_cnn", top=3, any_trial=True, search="other")
    assert [r.info.run_id for r in only] == [mine[1], mine[0]]
