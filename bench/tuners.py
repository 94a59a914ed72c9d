"""Random search, Bayesian optimization and Hyperband under the same wall-time budget.

    .venv/bin/python bench/tuners.py --data ../shared/data/chest_xray --minutes 15 \
        [--arch aug_cnn] [--tuners random bayesian hyperband] [--out bench/tuners.png]

Each tuner runs `pneumo-exp search` on the same configuration (experiments/<arch>.yaml,
search.time_budget_min = the budget, a trial budget it cannot reach), one after the other,
each a search of its own name in the working directory's store. From the trial runs it
records when each trial ended and its validation objective; it prints a markdown table
(trials, best validation AUC, when the best was reached) and plots the best validation AUC
so far against time for the three.
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
    name = f"bench-{tuner}-{args.minutes:g}min-seed{args.seed}"
    cmd = [sys.executable, "-m", "pneumo_exp.cli", "search", args.arch, "--tuner", tuner,
           "--name", name, "--time-budget", str(args.minutes), "--max-trials", "100",
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
    parser.add_argument("--tuners", nargs="+", default=["random", "bayesian", "hyperband"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="bench/tuners.png", help="the plot")
    args = parser.parse_args()

    from pneumo_exp.config import load_config
    from pneumo_exp.evaluation.plots import plt
    from pneumo_exp.tracking.listing import find_search
    from pneumo_exp.tracking.search_runs import SearchTracker
    from pneumo_exp.tracking.store import connect

    cfg = load_config(args.arch, {"data.root": args.data} if args.data else {})
    objective = cfg.search.objective
    client = connect()
    print(f"| tuner | trials (completed) | best {objective} | reached after | wall time |")
    print("|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for tuner in args.tuners:
        name = run(tuner, args)
        parent = find_search(client, name)
        tracker = SearchTracker(cfg, name, Path(".pneumo") / "unused")
        tracker.parent_run_id = parent.info.run_id
        rows = sorted((r for r in tracker.rows() if r.get(objective) is not None),
                      key=lambda r: r["ended_s"])
        best, curve = -1.0, []
        for r in rows:
            best = max(best, r[objective])
            curve.append((r["ended_s"] / 60, best))
        reached = next((t for t, b in curve if b >= best - 1e-12), float("nan"))
        m = parent.data.metrics
        print(f"| {tuner} | {int(m['n_trials'])} ({int(m['n_completed_trials'])}) | "
              f"{best:.4f} | {reached:.1f} min | {m['wall_time_s'] / 60:.1f} min |", flush=True)
        if curve:  # from the end of the first trial: nothing is known before it
            ax.step([t for t, _ in curve], [b for _, b in curve], where="post", label=tuner,
                    marker="o")
    ax.set_xlabel("minutes")
    ax.set_ylabel(f"best {objective} so far")
    ax.set_title(f"{args.arch}: tuners under a {args.minutes:g}-minute budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
