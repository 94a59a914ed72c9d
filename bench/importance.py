"""How long `pneumo-exp runs --search NAME --importance` takes on a search of N trials.

    .venv/bin/python bench/importance.py [--trials 50] [--rounds 3]

A search of N finished trials is written into a temporary MLflow store (aug_cnn's
hyperparameters drawn at random, an objective that depends on two of them, no training),
then the command runs on it: reading the trials, fANOVA, the three plots and their logging
on the parent run. Prints the best of --rounds, and the importance table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        import mlflow
        import numpy as np

        from pneumo_exp.cli import main as cli
        from pneumo_exp.config import load_config
        from pneumo_exp.data.dataset import TrainingData
        from pneumo_exp.data.labeled import LabeledImages
        from pneumo_exp.data.sources import SplitData
        from pneumo_exp.tracking.search_tracker import SearchTracker

        names = np.array([f"train/x/{i}.png" for i in range(4)])
        part = LabeledImages(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 0, 1, 1]),
                             names, names)
        data = TrainingData(Path(tmp), part, part,
                            {"train": SplitData(part, [], "bench", True, 0.0)})
        tracker = SearchTracker(load_config("aug_cnn"), "bench", Path(tmp) / "state")
        tracker.begin(data, {})
        rng = np.random.default_rng(0)
        for trial in range(args.trials):
            values = {"learning_rate": float(10 ** rng.uniform(-3.5, -2.5)),
                      "dropout": float(rng.choice([0.1, 0.2, 0.3, 0.4, 0.5])),
                      "filters_1": int(rng.choice([16, 32])),
                      "dense_units": int(rng.choice([64, 128, 256])),
                      "intensity": str(rng.choice(["equalize", "standardize"])),
                      "zoom": float(rng.choice([0.1, 0.2, 0.3])),
                      "contrast": float(rng.choice([0.1, 0.3, 0.5]))}
            auc = 0.99 - 0.01 * (np.log10(values["learning_rate"]) + 3) ** 2 \
                - 0.005 * values["dropout"] + rng.normal(0, 0.001)
            with tracker.trial_run(str(trial), values, "bench") as run_id:
                mlflow.log_metrics({"best_val_auc": auc, "epochs": 10.0})
                tracker.set_trial_status(run_id, "completed", candidate=True)
        tracker.end(None, {"trials": args.trials})
        times = []
        for _ in range(args.rounds):
            out = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out):
                assert cli(["runs", "--search", "bench", "--importance"]) == 0
            times.append(time.perf_counter() - start)
        table = out.getvalue().split("\n\n")[-1]
        print(f"pneumo-exp runs --search NAME --importance on {args.trials} trials: best of "
              f"{args.rounds} {min(times):.2f} s (all: {', '.join(f'{t:.2f}' for t in times)})"
              f"\n\n{table}")


if __name__ == "__main__":
    main()
