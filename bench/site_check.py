"""The site check's verdicts calibrated, by prevalence: how often it calls the training
hospital's own unseen images `shifted` or `another population` (false alarms), and how
often another hospital's.

    nice -n 10 .venv/bin/python bench/site_check.py \
        --model models:/pneumonia-classifier/1 --data ../shared/data/chest_xray \
        --other ../shared/data/external/nih \
        [--sizes 32 60 120] [--prevalences 0 0.1 0.5 0.9 1] [--resamples 100] \
        [--own-resamples 300] [--other-resamples 100] [--records FILE] [--only PART ...]

The version's own validation set is rebuilt from its search (never the test split for any
choice of the product). Subsets are drawn by patient from: each patient half of the test
split (bench/new_site.py's halves), the part of validation the version held out of its
reference (serving/features.py), and the --other folder (its patients from its labels.csv,
as the check groups them; --other-resamples draws a cell). Each subset has a given share
of PNEUMONIA (the labels choose the images; the check reads none): whole patients of each
class are drawn until the class has its count (the last one cut), --resamples times per
cell; a cell is left out when a class would need more than 90% of its images; a draw the
check refuses (fewer than 8 patients) is counted apart, and the shares are of the draws
checked. Held-out validation is also drawn at its own prevalence (--own-resamples times):
its `shifted` rate is the MMD test's false alarms, nominally 5%. Each subset goes through
the product's check (adaptation/site_check.assess_site: the prevalence estimated,
validation drawn to it, the classifier two-sample test and the MMD test as registered,
which decide); what the version as registered makes of each image is computed once
(`check` below), and the subsets are not adapted to (the adapted comparison never
decides; the whole sets show it). Then whole sets, also by class, and two copies of the
test split made worse (grey values inverted, Gaussian noise of 25 grey levels). Prints
markdown tables.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

Source = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, labels, patients


def by_patient(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n images of whole patients drawn at random (the last patient cut to n)."""
    take: list[int] = []
    for p in rng.permutation(np.unique(groups)):
        take += list(np.flatnonzero(groups == p))
        if len(take) >= n:
            break
    return np.array(take[:n])


def at_prevalence(labels: np.ndarray, groups: np.ndarray, n: int, prevalence: float,
                  k: int, seed: int) -> list[np.ndarray] | None:
    """k draws of n images, round(n * prevalence) of them PNEUMONIA, each class by whole
    patients; None when a class would need more than 90% of its images."""
    need = {1: round(n * prevalence), 0: n - round(n * prevalence)}
    if any(c > 0.9 * np.sum(labels == label) for label, c in need.items()):
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(k):
        parts = []
        for label, c in need.items():
            if c:
                rows = np.flatnonzero(labels == label)
                parts.append(rows[by_patient(groups[rows], c, rng)])
        draws.append(np.sort(np.concatenate(parts)))
    return draws


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def interval(hits: int, total: int) -> str:
    """The share and its exact (Clopper-Pearson) 95% interval."""
    from scipy.stats import binomtest

    ci = binomtest(hits, total).proportion_ci(0.95, method="exact")
    return f"{hits / total:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/pneumonia-classifier@champion")
    parser.add_argument("--data", type=Path, required=True, help="the version's dataset")
    parser.add_argument("--other", type=Path, help="another hospital's images (a folder)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 60, 120])
    parser.add_argument("--prevalences", type=float, nargs="+", default=[0, 0.1, 0.5, 0.9, 1])
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--own-resamples", type=int, default=300,
                        help="draws of held-out validation at its own prevalence, per size "
                        "(0: none)")
    parser.add_argument("--other-resamples", type=int, default=100,
                        help="draws of the --other folder a cell")
    parser.add_argument("--records", type=Path,
                        help="append each draw's verdict, AUC, MMD p and estimate (CSV)")
    parser.add_argument("--only", nargs="+", metavar="PART",
                        help="only these sources' draws (as the table names them) and, with "
                        "'whole', the whole sets: to share the run among processes")
    args = parser.parse_args()
    wanted = set(args.only) if args.only else None

    from new_site import halves

    from pneumo_exp.adaptation.site_check import (
        ANOTHER,
        LIKE,
        MIN_SITE_IMAGES,
        MIN_SITE_PATIENTS,
        SHIFTED,
        SiteCheck,
        assess_site,
        site_patients,
    )
    from pneumo_exp.cli.tf_import import import_tensorflow
    from pneumo_exp.config import CLASS_NAMES
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.data.images import decode_many, image_files
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.errors import DataError
    from pneumo_exp.registry.selection import candidate
    from pneumo_exp.serving.features import reference_split
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_SOURCES
    from pneumo_exp.tracking.store import connect
    import_tensorflow()

    model = classifier(load(args.model))
    key, = set(m.preprocessing for m in model.members)
    client = connect()
    version = registered_version(client, args.model)
    cfg = candidate(client, client.get_run(version.tags[TAG_SOURCES].split(",")[0])).cfg
    val = load_training_data(cfg.data, cfg.search.seed).val
    _, held = reference_split(val.labels, val.groups)
    test = load_split(open_source(args.data), "test", *key).data
    parts = halves(test.labels, test.groups, 0)
    sources: dict[str, Source] = {
        "test half A": (test.images[parts[0]], test.labels[parts[0]], test.groups[parts[0]]),
        "test half B": (test.images[parts[1]], test.labels[parts[1]], test.groups[parts[1]]),
        "held-out validation": (val.images[held], val.labels[held], val.groups[held])}
    if args.other:
        files = image_files([args.other])
        decoded = decode_many(files, [key])
        read = [files[i] for i in decoded.readable]
        sources[args.other.name] = (
            decoded.arrays[key], np.array([CLASS_NAMES.index(f.parent.name) for f in read]),
            site_patients(files, decoded, args.other))
    known = {name: (model.probabilities({key: images}), model.features({key: images}))
             for name, (images, _, _) in sources.items() if wanted is None or name in wanted}
    unadapted = replace(model.contract, features_adapted=None)

    def check(name: str, rows: np.ndarray) -> SiteCheck | None:
        """The check of these rows, their probabilities and features read from `known` (the
        same as computing them again) and not adapted to; None when it refuses them (too
        few patients)."""
        images, _, groups = sources[name]
        prob, features = known[name]
        drawn = SimpleNamespace(contract=unadapted, members=model.members,
                                threshold=model.threshold, probabilities=lambda _: prob[rows],
                                features=lambda _: features[rows])
        try:
            return assess_site(drawn, {key: images[rows]}, groups[rows])
        except DataError:
            return None

    def cell(name: str, label: str, n: int, draws: list[np.ndarray],
             line: Callable[[list[SiteCheck]], str] = lambda _: "") -> None:
        started = time.time()
        checked = [check(name, rows) for rows in draws]
        found = [c for c in checked if c is not None]
        if not found:
            print(f"| {name} | {label} | {n} x {len(draws)} | all refused: too few patients |")
            return
        kinds = [c.kind for c in found]
        auc = np.array([c.source.auc for c in found])
        estimate = np.array([np.nan if c.prevalence is None else c.prevalence for c in found])
        share = {k: kinds.count(k) / len(kinds) for k in (LIKE, SHIFTED, ANOTHER)}
        refused = len(checked) - len(found)
        print(f"| {name} | {label} | {n} x {len(found)}"
              + (f" ({refused} refused)" if refused else "") + f" | {share[LIKE]:.0%} | "
              f"{share[SHIFTED]:.0%} | **{share[ANOTHER]:.0%}** | "
              f"{np.nanmedian(estimate):.0%} | "
              + " / ".join(f"{q:.3f}" for q in np.percentile(auc, [0, 50, 99, 100]))
              + f" | {line(found)} <!-- {time.time() - started:.0f} s -->", flush=True)
        if args.records:
            with args.records.open("a") as f:
                f.writelines(f"{name},{label},{n},{c.kind},{c.source.auc:.4f},"
                             f"{c.source.mmd.p_value:.4f},{c.prevalence}\n" for c in found)

    print(f"{args.model}: {len(val)} validation images ({len(held)} held out of the "
          f"reference, {np.mean(val.labels):.0%} PNEUMONIA), {len(test)} test images; "
          f"{args.resamples} draws a cell\n")
    print(f"| images from | PNEUMONIA | n x draws | {LIKE} | {SHIFTED} | {ANOTHER} | "
          "estimated (median) | AUC min / median / 99th / max | shifted, 95% interval |")
    print("|---|---|---|---|---|---|---|---|---|")
    _, held_labels, held_groups = sources["held-out validation"]
    for n in args.sizes:
        if (n > 0.9 * len(held_groups) or "held-out validation" not in known
                or not args.own_resamples):
            continue
        rng = np.random.default_rng(n)
        draws = [by_patient(held_groups, n, rng) for _ in range(args.own_resamples)]
        cell("held-out validation", f"its own ({np.mean(held_labels):.0%})", n, draws,
             lambda found: interval(sum(c.kind == SHIFTED for c in found), len(found)))
    for name, (_, labels, groups) in sources.items():
        if name not in known:
            continue
        for prevalence in args.prevalences:
            for n in args.sizes:
                k = (args.other_resamples if args.other and name == args.other.name
                     else args.resamples)
                draws = at_prevalence(labels, groups, n, prevalence, k,
                                      seed=n + round(100 * prevalence))
                if draws is not None:
                    cell(name, f"{prevalence:.0%}", n, draws)

    if wanted is not None and "whole" not in wanted:
        return
    rng = np.random.default_rng(0)
    worse = {"test split, inverted": 255 - test.images,
             "test split, noise sd 25": np.clip(test.images + rng.normal(
                 0, 25, test.images.shape), 0, 255).astype(np.uint8)}
    whole = {**sources, "test split": (test.images, test.labels, test.groups)}
    print("\n| images | n | verdict | estimated PNEUMONIA | AUC | adapted AUC |\n"
          "|---|---|---|---|---|---|")
    for name, (images, labels, groups) in whole.items():
        for what, rows in (("", np.arange(len(labels))),
                           (", NORMAL only", np.flatnonzero(labels == 0)),
                           (", PNEUMONIA only", np.flatnonzero(labels == 1))):
            if len(rows) < MIN_SITE_IMAGES or len(set(groups[rows])) < MIN_SITE_PATIENTS:
                continue
            c = assess_site(model, {key: images[rows]}, groups[rows])
            print(f"| {name}{what} | {len(rows)} | {c.kind} | {percent(c.prevalence)} | "
                  f"{c.source.auc:.3f} | {c.adapted.auc if c.adapted else float('nan'):.3f} |",
                  flush=True)
    for name, images in worse.items():
        c = assess_site(model, {key: images}, test.groups)
        print(f"| {name} | {len(images)} | {c.kind} | {percent(c.prevalence)} | {c.source.auc:.3f} "
              f"| {c.adapted.auc if c.adapted else float('nan'):.3f} |", flush=True)


if __name__ == "__main__":
    main()
