"""The default search against the other ways to spend its time: multi-fidelity screening,
one-stage Bayesian optimization, Hyperband, random search; judged on validation and on
patients of another block (bench/new_site.py).

    .venv/bin/python bench/tuners.py --data ../shared/data/chest_xray \
        [--tuners default screened bayesian hyperband] [--minutes M] [--seed 42] \
        [--new-site] [--set KEY=VALUE ...] [--out bench/tuners.png]

Each runs `pneumo-exp search` in the working directory's store, one after the other, as a
search of its own name:

- default: experiments/<arch>.yaml as it is (its own trial budget, no clock);
- screened: the same space, 12 configurations screened at 48 px on a third of train for 3
  epochs, the best 3 trained at full fidelity;
- bayesian, random: one stage, every trial at full fidelity, as many as fit;
- hyperband: Hyperband's rounds at full resolution, as many as fit.

All but the default stop at --minutes (default: the default search's own wall time, so
each gets what it took). Then `pneumo-exp compare` prints their best trials side by side,
whether they differ by more than the validation noise, and plots the best objective so far
against time and trials; with --new-site, each search's best trials are promoted as
promote does (TOP=3, the noise rule) under a model of its own and scored by
bench/new_site.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCREENED = ["--set", "search.screen_trials=12", "--set", "search.full_trials=3",
            "--set", "search.max_trials=15"]
ONE_STAGE = ["--max-trials", "100", "--set", "search.screen_trials=0"]
HOW = {"default": [], "screened": SCREENED, "bayesian": ["--tuner", "bayesian", *ONE_STAGE],
       "random": ["--tuner", "random", *ONE_STAGE],
       "hyperband": ["--tuner", "hyperband", *ONE_STAGE]}


def run(tuner: str, args: argparse.Namespace, minutes: float | None) -> tuple[str, float]:
    """One search; its name and wall time in minutes."""
    name = f"bench-{tuner}-seed{args.seed}"
    cmd = [sys.executable, "-m", "pneumo_exp.cli", "search", args.arch, *HOW[tuner],
           "--name", name, "--seed", str(args.seed), "--fresh",
           *(["--time-budget", f"{minutes:.2f}"] if minutes else []),
           *(["--data", args.data] if args.data else []),
           *[x for item in args.set for x in ("--set", item)]]
    started = time.time()
    log = Path(f"bench-{tuner}.log")
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{tuner}: pneumo-exp search exited with {code}; see {log}")
    took = (time.time() - started) / 60
    print(f"{tuner}: {took:.1f} min (log {log})", file=sys.stderr)
    return name, took


def new_site(tuner: str, name: str) -> dict:
    """Promote the search's best trials under a model of its own; score it on new patients."""
    model = f"bench-{tuner}"
    cli = [sys.executable, "-m", "pneumo_exp.cli"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.check_call([*cli, "promote", "--search", name, "--model-name", model], **quiet)
    subprocess.check_call([sys.executable, str(Path(__file__).with_name("new_site.py")),
                           "--model", f"models:/{model}@champion"], **quiet)
    from mlflow.tracking import MlflowClient

    from pneumo_exp.tracking.names import CHAMPION, TAG_MEMBERS, TAG_NEW_SITE
    from pneumo_exp.tracking.store import connect

    client: MlflowClient = connect()
    version = client.get_model_version_by_alias(model, CHAMPION)
    return {"members": version.tags[TAG_MEMBERS], **json.loads(version.tags[TAG_NEW_SITE])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset (default: as pneumo-exp search)")
    parser.add_argument("--arch", default="aug_cnn")
    parser.add_argument("--minutes", type=float, help="budget of each capped search (default: "
                        "the default search's wall time)")
    parser.add_argument("--tuners", nargs="+", default=["default", "screened", "bayesian",
                                                        "hyperband"], choices=list(HOW))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--new-site", action="store_true",
                        help="promote each search's best and score it on new patients")
    parser.add_argument("--out", default="bench/tuners.png", help="the plot")
    args = parser.parse_args()
    minutes, names = args.minutes, {}
    for tuner in sorted(args.tuners, key=lambda t: t != "default"):  # the default first
        names[tuner], took = run(tuner, args, None if tuner == "default" else minutes)
        if tuner == "default" and minutes is None:
            minutes = took
    # the comparison is pneumo-exp's own: a table of the best trials, the noise verdicts,
    # a plot of the best so far against time and against trials
    subprocess.check_call([sys.executable, "-m", "pneumo_exp.cli", "compare", *names.values(),
                           "--out", args.out])
    if args.new_site:
        print("\n| search | members | as registered acc / sens / spec / AUC | adapted |")
        print("|---|---|---|---|")
        for tuner, name in names.items():
            r = new_site(tuner, name)
            cells = [" / ".join(f"{r[k][f]:.3f}" for f in ("accuracy", "sensitivity",
                                                           "specificity", "auc"))
                     for k in ("as registered", "adapted")]
            print(f"| {tuner} | {r['members']} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
