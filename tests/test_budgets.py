"""What the user asks for is what the search runs: MAX_TRIALS counts every trial, screened
ones included, and EPOCHS caps every stage; every trial run carries its evidence; the
parent run records the machine that decides its figures. Through make and the console
script, on the bundled sample, as a user types them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
QUICK = "tracking.gradcam_images=0 train.batch_size=64"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _trials(work: Path) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`pneumo.role` = 'trial'"), client


def test_make_max_trials_and_epochs_bound_a_screened_search(tmp_path: Path) -> None:
    """A search named 5 screened and 2 full (of 7): MAX_TRIALS=3 keeps that share, 2
    screened and 1 full, and EPOCHS=1 caps the screening's 2 epochs too."""
    split = "search.screen_trials=5 search.full_trials=2 search.screen_epochs=2"
    proc = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "search", "ARCH=aug_cnn",
                           f"VENV={sys.prefix}", "STAMP=", "MAX_TRIALS=3", "EPOCHS=1",
                           f"SET={QUICK} {split}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "Plan: 3 trials: 2 configurations screened" in console
    runs, client = _trials(tmp_path)
    assert len(runs) == 3
    assert sorted(r.data.tags["pneumo.fidelity"] for r in runs) == ["full", "screen", "screen"]
    assert all(r.data.metrics["epochs"] == 1 for r in runs)
    for run in runs:  # every trial carries its evidence; a screened one says it has no model
        files = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/val_confusion_matrix.png",
                "plots/val_roc.png"} <= files, (run.data.tags["pneumo.fidelity"], files)
        assert "val_predictions.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.params  # the hyperparameters
        screened = run.data.tags["pneumo.fidelity"] == "screen"
        assert run.data.tags["pneumo.checkpoint"].startswith("none" if screened else "logged")
    parent = client.search_runs([runs[0].info.experiment_id],
                                "tags.`pneumo.role` = 'search'")[0]
    tags = parent.data.tags
    assert tags["search.max_trials"] == "3" and tags["search.split"] == "2 screened + 1 full"
    # the machine record: what decides the figures besides the configuration and seed
    assert tags["machine.cpu"] and tags["machine.threads"] == "2"
    assert tags["machine.keras"] and tags["machine.keras-tuner"] == "1.4.8"
    assert "machine.isa" in tags and "machine.onednn" in tags
    assert any(k.startswith("machine.tensorflow") for k in tags)


@pytest.mark.parametrize(("arch", "max_trials"), [("baseline", 1), ("aug_cnn", 2)])
def test_the_console_script_runs_exactly_max_trials(tmp_path: Path, arch: str,
                                                    max_trials: int) -> None:
    """Too few trials to screen (the split 12 : 3): all of them at full fidelity, for EPOCHS
    epochs each."""
    split = "search.screen_trials=12 search.full_trials=3"
    proc = subprocess.run([str(Path(sys.executable).parent / "pneumo-exp"), "search", arch,
                           "--max-trials", str(max_trials), "--epochs", "1",
                           *[x for item in f"{QUICK} {split}".split() for x in ("--set", item)]],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "too few to screen" in proc.stdout + proc.stderr
    runs, _ = _trials(tmp_path)
    assert len(runs) == max_trials
    assert {r.data.tags["pneumo.fidelity"] for r in runs} == {"full"}
    assert all(r.data.metrics["epochs"] == 1 for r in runs)
    assert f"{max_trials} of {max_trials} trials completed" in proc.stdout
