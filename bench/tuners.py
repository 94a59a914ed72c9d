"""The multi-fidelity search, Bayesian optimization, random search and Hyperband under the
same wall-time cap.

    .venv/bin/python bench/tuners.py --data ../shared/data/chest_xray --minutes 15 \
        [--arch aug_cnn] [--tuners screened bayesian hyperband] [--out bench/tuners.png]

Each tuner runs `pneumo-exp search` on the same configuration (experiments/<arch>.yaml,
search.time_budget_min = the budget, a trial budget it cannot reach), one after the other,
each a search of its own name in the working directory's store; then `pneumo-exp compare`
prints their best trials side by side and plots the best objective so far against time and
against trials.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(tuner: str, args: argparse.Namespace) -> str:
    """One search: `screened` is the experiment as configured (its screening, then its
    full-fidelity trials); a tuner's name runs every trial at full fidelity with it."""
    name = f"bench-{tuner}-{args.minutes:g}min-seed{args.seed}"
    how = ([] if tuner == "screened" else
           ["--tuner", tuner, "--max-trials", "100", "--set", "search.screen_trials=0"])
    cmd = [sys.executable, "-m", "pneumo_exp.cli", "search", args.arch, *how,
           "--name", name, "--time-budget", str(args.minutes),
           "--seed", str(args.seed), "--fresh", *(["--data", args.data] if args.data else []),
           *[x for item in args.set for x in ("--set", item)]]
    started = time.time()
    log = Path(f"bench-{tuner}.log")
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{tuner}: pneumo-exp search exited with {code}; see {log}")
    print(f"{tuner}: {time.time() - started:.0f} s (log {log})", file=sys.stderr)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset (default: as pneumo-exp search)")
    parser.add_argument("--arch", default="aug_cnn")
    parser.add_argument("--minutes", type=float, default=15.0, help="budget of each tuner")
    parser.add_argument("--tuners", nargs="+", default=["screened", "bayesian", "hyperband"],
                        help="screened (the experiment's multi-fidelity search), random, "
                        "bayesian, hyperband")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="bench/tuners.png", help="the plot")
    args = parser.parse_args()
    names = [run(tuner, args) for tuner in args.tuners]
    # the comparison is pneumo-exp's own: a table of the best trials, a plot of the best
    # so far against time and against trials
    subprocess.check_call([sys.executable, "-m", "pneumo_exp.cli", "compare", *names,
                           "--out", args.out])


if __name__ == "__main__":
    main()
