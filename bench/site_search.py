"""Reuse at a new site, judged: the site search's variants on the same images, over seeds.

    .venv/bin/python bench/site_search.py --base models:/pneumonia-classifier@champion \
        --data ../shared/data/external/nih --seeds 1 2 3 --work bench-site \
        [--kermany ../shared/data/chest_xray] [--variant-trials 6]

The site folder's patients are cut by a fixed hash of their id (sha256, the first 30 of
100 buckets) into a test part, which no search sees, and the rest, a site folder of its own
(links to the files, and its rows of labels.csv) under WORK. On the rest, for each seed,
the product's own search and promote (`pneumo-exp search site`, `pneumo-exp promote
--site`) run as:

- `default`: experiments/site.yaml as it is;
- `warm`, `warm+mixed`: starting from the base's members only, without and with the
  training site's images mixed in (space.mix 0.5-1.0);
- `scratch`, `scratch+mixed`: the default family from scratch, without and with them
  (--variant-trials trials each);

each registered under the model name `site-bench` (--model-name: another, to promote a
search again with other code: a promote of the same trials under one name finds their
version and registers none). Every version is scored on the test part
(AUC with a 95% bootstrap interval, and sensitivity and specificity at its threshold with
exact intervals, beside the intervals its card states: the out-of-fold counts its contract
validated), beside the base as registered and adapted to the test part's images; with
--kermany, also on the training hospital's test split as registered and by
bench/new_site.py's protocol (adapted): AUC, and specificity at its threshold and at
sensitivity 0.95 (does it still hold on children?). Each version's record says which trials
it chose (their `mix`), what they keep of the base, and its population's ages. Each run's
figures are saved under WORK as they finish: it resumes. --trials sets the default's
search.max_trials (experiments/site.yaml's otherwise).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TEST_BUCKETS = 30  # of 100: the share of patients in the test part


def patient_of(name: str, rows: dict[str, str]) -> str:
    from pneumo_exp.data.split import patient_id

    return rows.get(name) or patient_id(name)


def cut(data: Path, work: Path) -> tuple[Path, list[Path], np.ndarray]:
    """The rest of the site as a folder under WORK (links and its CSV rows); the test
    part's files and labels."""
    from pneumo_exp.config import CLASS_NAMES
    from pneumo_exp.data.images import image_files

    rows: dict[str, str] = {}
    header, lines = None, []
    if (data / "labels.csv").is_file():
        with (data / "labels.csv").open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            lines = list(reader)
        file_col = header.index("file")
        patient_col = header.index("patient_id" if "patient_id" in header else "patient")
        rows = {r[file_col]: r[patient_col] for r in lines}
    rest = work / "site"
    test_files, test_labels, kept = [], [], set()
    for label, cls in enumerate(CLASS_NAMES):
        (rest / cls).mkdir(parents=True, exist_ok=True)
        for f in image_files([data / cls]):
            bucket = int(hashlib.sha256(patient_of(f.name, rows).encode()).hexdigest(), 16) % 100
            if bucket < TEST_BUCKETS:
                test_files.append(f)
                test_labels.append(label)
            else:
                kept.add(f.name)
                link = rest / cls / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
    if header is not None:
        with (rest / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(r for r in lines if r[header.index("file")] in kept)
    return rest, test_files, np.array(test_labels)


def variants(members: int, trials: int, default_trials: int | None = None
             ) -> dict[str, list[str]]:
    starts = "[" + ", ".join(f"member {i}" for i in range(members)) + "]"
    few = [f"search.max_trials={trials}"]
    return {"default": [f"search.max_trials={default_trials}"] if default_trials else [],
            "warm": [*few, f"space.start={starts}", "space.mix=0.0"],
            "warm+mixed": [*few, f"space.start={starts}", "space.mix=[0.5, 1.0]"],
            "scratch": [*few, "space.start=scratch", "space.mix=0.0"],
            "scratch+mixed": [*few, "space.start=scratch", "space.mix=[0.5, 1.0]"]}


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(cmd[3:6])}... exited with {code}; see {log}")


def scored(uri: str, files: list[Path], labels: np.ndarray, adapt: bool = False
           ) -> dict[str, Any]:
    """AUC [95% bootstrap], and sensitivity and specificity at the version's threshold."""
    from sklearn.metrics import roc_auc_score

    from pneumo_exp.evaluation.metrics import binary_metrics, bootstrap_ci
    from pneumo_exp.serving.batch_norm import adapt_batch_norm
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    model = classifier(load(uri))
    decoded = model.decode([f.read_bytes() for f in files])
    if adapt:
        for m in model.members:
            adapt_batch_norm(m.model, decoded.arrays[m.preprocessing])
    prob = model.probabilities(decoded.arrays)
    y = labels[decoded.readable]
    f = binary_metrics(y, prob, model.threshold)
    low, high = bootstrap_ci(y, prob, model.threshold, 1000)["auc"]
    return {"auc": float(roc_auc_score(y, prob)), "auc_low": low, "auc_high": high,
            "sensitivity": float(f["sensitivity"]), "specificity": float(f["specificity"]),
            **proportions({"sensitivity": (int(f["tp"]), int(f["tp"] + f["fn"])),
                           "specificity": (int(f["tn"]), int(f["tn"] + f["fp"]))})}


def proportions(counts: dict[str, Any]) -> dict[str, Any]:
    """(hits, total) of each figure, with its exact (Clopper-Pearson) 95% interval."""
    from pneumo_exp.evaluation.report import Proportion

    return {f"{k}_counts": [h, t] for k, (h, t) in counts.items()} | {
        f"{k}_ci": list(Proportion(h, t).interval) for k, (h, t) in counts.items()}


def version_record(uri: str) -> dict[str, Any]:
    """What the version says of itself: its card's validated (out-of-fold) counts and
    intervals, its population's ages, the figures of its evaluation run (the training
    hospital's validation, out of fold), and its trials' mix."""
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_EVALUATION_RUN, TAG_SOURCES
    from pneumo_exp.tracking.store import connect

    client = connect()
    version = registered_version(client, uri)
    contract = classifier(load(uri)).contract
    metrics = client.get_run(version.tags[TAG_EVALUATION_RUN]).data.metrics
    trials = [client.get_run(r) for r in version.tags[TAG_SOURCES].split(",")]
    return {"version": str(version.version), "threshold": contract.threshold,
            "card": proportions(contract.validated),
            "ages": [contract.population.min_age, contract.population.max_age],
            "figures": {k: v for k, v in metrics.items()
                        if k.startswith(("training_site_", "site_oof_", "val_auc"))},
            "trials": [{k: t.data.params.get(k) for k in ("start", "mix", "train_layers",
                                                          "learning_rate", "epochs")}
                       | {"training_site_auc": t.data.metrics.get("training_site_auc")}
                       for t in trials]}


def kermany(uri: str, root: Path, cache: dict[str, Any]) -> dict[str, float]:
    """The training hospital's test split as registered, and by bench/new_site.py's
    protocol (each half adapted on the other): AUC, sensitivity and specificity at the
    version's threshold, specificity at sensitivity 0.95."""
    from new_site import halves, score
    from sklearn.metrics import roc_auc_score

    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.evaluation.metrics import binary_metrics, spec_at_sens

    if "test" not in cache:
        test = load_split(open_source(root), "test", 32, 1).data
        cache["test"] = (test, [(root / n).read_bytes() for n in test.names],
                         halves(test.labels, test.groups, 0))
    test, images, parts = cache["test"]
    out: dict[str, Any] = {}
    for how, adapt in (("registered", False), ("adapted", True)):
        prob, threshold = score(uri, images, parts, adapt=adapt)
        f = binary_metrics(test.labels, prob, threshold)
        out[how] = {"auc": float(roc_auc_score(test.labels, prob)),
                    "sensitivity": float(f["sensitivity"]),
                    "specificity": float(f["specificity"]),
                    "spec_at_sens": spec_at_sens(test.labels, prob, 0.95)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="models:/pneumonia-classifier@champion")
    parser.add_argument("--data", type=Path, required=True, help="the site's labelled folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work", type=Path, default=Path("bench-site"))
    parser.add_argument("--kermany", type=Path, help="the training hospital's dataset")
    parser.add_argument("--trials", type=int, help="the default's trials (site.yaml's)")
    parser.add_argument("--variant-trials", type=int, default=6)
    parser.add_argument("--variants", nargs="*", help="only these (default: all)")
    parser.add_argument("--model-name", default="site-bench",
                        help="the registered model the versions go to")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from pneumo_exp.cli.tf_import import import_tensorflow
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    import_tensorflow()

    rest, test_files, test_labels = cut(args.data.resolve(), args.work.resolve())
    members = len(classifier(load(args.base)).members)
    print(f"{args.data}: {len(test_files)} test images ({test_labels.sum()} PNEUMONIA) by a "
          f"fixed patient hash; the searches see the other {sum(1 for _ in rest.rglob('*.png'))}"
          f"\n")
    cli = [sys.executable, "-m", "pneumo_exp.cli"]
    results: dict[str, list[dict[str, Any]]] = {}
    cache: dict[str, Any] = {}
    base = args.work / "base.json"
    if not base.is_file():
        figures = {"registered": scored(args.base, test_files, test_labels),
                   "adapted": scored(args.base, test_files, test_labels, adapt=True)}
        base.write_text(json.dumps(figures))
    base_figures = json.loads(base.read_text())
    chosen = variants(members, args.variant_trials, args.trials)
    for name, sets in chosen.items():
        if args.variants and name not in args.variants:
            continue
        for seed in args.seeds:
            out = args.work / f"{name}-s{seed}.json"
            if not out.is_file():
                site = f"{args.work.name}-{name.replace('+', '-')}-s{seed}"  # its own trials
                run([*cli, "search", "site", "--base", args.base, "--data", str(rest),
                     "--site", site, "--seed", str(seed),
                     *[x for s in sets for x in ("--set", s)]], args.work / f"{site}.log")
                run([*cli, "promote", "site", "--site", site, "--model-name", args.model_name],
                    args.work / f"{site}-promote.log")
                uri = f"models:/{args.model_name}@site-{site}"
                figures = {"site": site, "test": scored(uri, test_files, test_labels),
                           "record": version_record(uri)}
                if args.kermany:
                    figures["kermany"] = kermany(uri, args.kermany.resolve(), cache)
                out.write_text(json.dumps(figures))
            results.setdefault(name, []).append(json.loads(out.read_text()))
            print(f"{name} seed {seed}: AUC {results[name][-1]['test']['auc']:.3f}", flush=True)

    table(args.seeds, base_figures, results)


def _ci(f: dict[str, Any], key: str) -> str:
    low, high = f[f"{key}_ci"]
    return f"{f[key]:.3f} [{low:.2f}, {high:.2f}]"


def _mean(runs: list[dict[str, Any]], how: str) -> dict[str, float]:
    """The training hospital's figures (`how`: registered, adapted), averaged over seeds."""
    return {k: float(np.mean([r["kermany"][how][k] for r in runs]))
            for k in ("auc", "specificity")}


def table(seeds: list[int], base: dict[str, Any], results: dict[str, list[dict[str, Any]]]
          ) -> None:
    """The figures as docs/results.md gives them."""
    print("\n| version | seed | test part: AUC [95%] | sens at its threshold [exact 95%] | "
          "the card's [out of fold] | spec at its threshold | the card's | training "
          "hospital as registered: AUC, sens / spec | adapted: AUC, spec, spec at sens 0.95 "
          "| its trials' mix; ages |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for how in ("registered", "adapted"):
        f = base[how]
        print(f"| the base, {how} | | {f['auc']:.3f} [{f['auc_low']:.3f}, {f['auc_high']:.3f}]"
              f" | {f['sensitivity']:.3f} | | {f['specificity']:.3f} | | | | |")
    for name, runs in results.items():
        for seed, r in zip(seeds, runs, strict=False):
            t, rec, k = r["test"], r.get("record", {}), r.get("kermany", {})
            card = rec.get("card", {})
            cells = [f"{t['auc']:.3f} [{t['auc_low']:.3f}, {t['auc_high']:.3f}]",
                     _ci(t, "sensitivity") if "sensitivity_ci" in t else f"{t['sensitivity']:.3f}",
                     "[{:.2f}, {:.2f}]".format(*card["sensitivity_ci"]) if card else "",
                     _ci(t, "specificity") if "specificity_ci" in t else f"{t['specificity']:.3f}",
                     "[{:.2f}, {:.2f}]".format(*card["specificity_ci"]) if card else ""]
            if k:
                g, a = k["registered"], k["adapted"]
                cells += [f"{g['auc']:.3f}, {g['sensitivity']:.3f} / {g['specificity']:.3f}",
                          f"{a['auc']:.3f}, {a['specificity']:.3f}, {a['spec_at_sens']:.3f}"]
            else:
                cells += ["", ""]
            mixes = ", ".join(str(tr["mix"]) for tr in rec.get("trials", []))
            cells.append(f"{mixes}; {rec.get('ages')}" if rec else "")
            print(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        mean = [f"{np.mean([r['test']['auc'] for r in runs]):.3f}"]
        for key in ("sensitivity", "specificity"):
            mean += [f"{np.mean([r['test'][key] for r in runs]):.3f}", ""]
        if all("registered" in r.get("kermany", {}) for r in runs):
            g, a = (_mean(runs, how) for how in ("registered", "adapted"))
            mean += [f"{g['auc']:.3f}, spec {g['specificity']:.3f}",
                     f"{a['auc']:.3f}, {a['specificity']:.3f}"]
        print(f"| **{name}, mean** | | " + " | ".join(mean) + " | |")


if __name__ == "__main__":
    main()
