"""A default judged over seeds: for each seed, `pneumo-exp search`, `pneumo-exp promote` and
bench/new_site.py in a folder of its own, then one table of every seed and their mean.

    .venv/bin/python bench/seeds.py --data ../shared/data/chest_xray --seeds 42 1 2 \
        [--arch aug_cnn] [--set KEY=VALUE ...] [--top K] [--work bench-seeds/NAME] \
        [--min-sensitivity 0.9 ...]

A seed changes the validation split, the tuner's draws and every network's weights and
augmentation, so the spread over seeds is what one user's run may give; a difference
between two settings smaller than that spread is not a result. The search and promote
read validation only; new_site.py scores the registered version on the test split's two
patient halves, as registered and adapted to the other half (the protocol in its
docstring). A seed whose folder already holds its figures is read, not run again, so an
interrupted judgement resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from new_site import CEILING, CEILING_SENSITIVITY

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIGURES = ("accuracy", "sensitivity", "specificity", "auc")
RESULT = "seed_result.json"


def run(cmd: list[str], work: Path, log: str) -> float:
    """Run a command in `work`, its output in `log`; seconds it took."""
    started = time.time()
    with (work / log).open("w") as out:
        code = subprocess.call(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(cmd[:4])}... exited with {code}; see {work / log}")
    return time.time() - started


def one_seed(seed: int, args: argparse.Namespace) -> dict:
    work = args.work / f"seed-{seed}"
    if (work / RESULT).is_file():
        return json.loads((work / RESULT).read_text())
    work.mkdir(parents=True, exist_ok=True)
    env_store = {"MLFLOW_TRACKING_URI": f"sqlite:///{work.resolve() / 'mlruns' / 'mlflow.db'}"}
    os.environ.update(env_store)
    cli = [sys.executable, "-m", "pneumo_exp.cli"]
    sets = [x for item in args.set for x in ("--set", item)]
    search_s = run([*cli, "search", args.arch, "--data", str(args.data.resolve()), "--seed",
                    str(seed), *sets], work, "search.log")
    from mlflow.tracking import MlflowClient

    from pneumo_exp.tracking.names import CHAMPION, TAG_MEMBERS, TAG_NEW_SITE, TAG_THRESHOLD

    client = MlflowClient(env_store["MLFLOW_TRACKING_URI"])
    bench = Path(__file__).resolve().parent
    result: dict = {"seed": seed, "search_s": round(search_s, 1)}
    # the configured operating point first, then each --min-sensitivity as a model of its own
    for i, target in enumerate([None, *args.min_sensitivity]):
        name = "pneumonia-classifier" if target is None else f"operating-point-{target}"
        run([*cli, "promote", args.arch, *(["--top", str(args.top)] if args.top else []),
             *(["--model-name", name, "--min-sensitivity", str(target)] if target else [])],
            work, f"promote{i}.log")
        run([sys.executable, str(bench / "new_site.py"), "--model", f"models:/{name}@{CHAMPION}"],
            work, f"new_site{i}.log")
        version = client.get_model_version_by_alias(name, CHAMPION)
        new_site = json.loads(version.tags[TAG_NEW_SITE])
        figures = {"members": int(version.tags[TAG_MEMBERS]),
                   "threshold": float(version.tags[TAG_THRESHOLD]),
                   "val_auc": float(version.tags["pneumo.val_auc"]),
                   "as registered": new_site["as registered"], "adapted": new_site["adapted"]}
        if target is None:
            result.update(figures)
        else:
            result.setdefault("operating points", {})[str(target)] = figures
    (work / RESULT).write_text(json.dumps(result, indent=1))
    return result


def cells(figures: dict[str, float]) -> str:
    return " / ".join(f"{figures[k]:.3f}" for k in FIGURES)


def ceiling(figures: dict[str, float]) -> str:
    """new_site.py's best specificity at its CEILING_SENSITIVITY, any threshold (absent
    from figures saved before it printed one)."""
    best = figures.get(CEILING)
    return "" if best is None else f"{best:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--arch", default="aug_cnn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override of every search")
    parser.add_argument("--top", type=int, help="promote's TOP (default registry.top)")
    parser.add_argument("--work", type=Path, default=Path("bench-seeds"),
                        help="a folder per seed under it")
    parser.add_argument("--min-sensitivity", type=float, nargs="*", default=[],
                        help="other operating points: the same trials promoted again with "
                        "the threshold keeping this validation sensitivity")
    args = parser.parse_args()
    results = [one_seed(s, args) for s in args.seeds]
    print(f"{args.arch} {' '.join(args.set) or '(the configured default)'}; figures on the "
          "test split's patient halves at the stored threshold, pooled (bench/new_site.py)\n")
    print("| seed | search | members | val AUC | threshold | as registered acc / sens / "
          f"spec / AUC | adapted | adapted: best spec at sens >= {CEILING_SENSITIVITY} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['seed']} | {r['search_s'] / 60:.1f} min | {r['members']} | "
              f"{r['val_auc']:.4f} | {r['threshold']:.3f} | {cells(r['as registered'])} | "
              f"{cells(r['adapted'])} | {ceiling(r['adapted'])} |")
    mean = {kind: {k: float(np.mean([r[kind][k] for r in results])) for k in FIGURES}
            for kind in ("as registered", "adapted")}
    print(f"| mean | {np.mean([r['search_s'] for r in results]) / 60:.1f} min | | "
          f"{np.mean([r['val_auc'] for r in results]):.4f} | | "
          f"{cells(mean['as registered'])} | {cells(mean['adapted'])} |")
    low = {k: min(r["adapted"][k] for r in results) for k in FIGURES}
    high = {k: max(r["adapted"][k] for r in results) for k in FIGURES}
    print(f"\nadapted, lowest / highest seed: {cells(low)} / {cells(high)}")
    for target in args.min_sensitivity:
        points = [r.get("operating points", {}).get(str(target)) for r in results]
        if None in points:
            continue
        print(f"\nthreshold keeping validation sensitivity >= {target}:")
        for r, p in zip(results, points, strict=True):
            print(f"| {r['seed']} | {p['threshold']:.3f} | {cells(p['as registered'])} | "
                  f"{cells(p['adapted'])} |")
        mean = {kind: {k: float(np.mean([p[kind][k] for p in points])) for k in FIGURES}
                for kind in ("as registered", "adapted")}
        print(f"| mean | | {cells(mean['as registered'])} | {cells(mean['adapted'])} |")


if __name__ == "__main__":
    main()
