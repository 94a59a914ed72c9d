"""The site check's verdicts calibrated: how often it calls the training hospital's own
unseen images `another population` (false alarms), and how often another hospital's.

    .venv/bin/python bench/site_check.py --model models:/pneumonia-classifier@champion \
        --data ../shared/data/chest_xray --other ../shared/data/external/nih \
        [--sizes 32 60 120] [--resamples 100] [--other-resamples 30]

The version's own validation set is rebuilt from its search (never the test split for any
choice of the product). Subsets of each size are drawn by patient, --resamples times, from:
each patient half of the test split (bench/new_site.py's halves), the part of validation
the version held out of its reference (serving/features.py), and the --other folder; each
goes through the product's check (adaptation/site_check.assess_site: the classifier
two-sample test and the MMD test, as registered and adapted). Then the whole sets, and two
copies of the test split made worse (grey values inverted, Gaussian noise of 25 grey
levels). Prints markdown tables: the share of each verdict and the AUCs' percentiles.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def subsets(groups: np.ndarray, n: int, k: int, seed: int) -> list[np.ndarray]:
    """k draws of n images by whole patients (the last patient cut to n)."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    out = []
    for _ in range(k):
        take: list[int] = []
        for p in rng.permutation(patients):
            take += list(np.flatnonzero(groups == p))
            if len(take) >= n:
                break
        out.append(np.array(take[:n]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/pneumonia-classifier@champion")
    parser.add_argument("--data", type=Path, required=True, help="the version's dataset")
    parser.add_argument("--other", type=Path, help="another hospital's images (a folder)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 60, 120])
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--other-resamples", type=int, default=30,
                        help="subsets of the --other folder (its verdicts' power)")
    args = parser.parse_args()

    from new_site import halves

    from pneumo_exp.adaptation.site_check import ANOTHER, LIKE, SHIFTED, assess_site
    from pneumo_exp.cli.tf_import import import_tensorflow
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.data.images import image_files
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.data.split import patient_id
    from pneumo_exp.registry.selection import candidate
    from pneumo_exp.serving.features import reference_split
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_SOURCES
    from pneumo_exp.tracking.store import connect
    import_tensorflow()

    model = classifier(load(args.model))
    (size, channels), = set(m.preprocessing for m in model.members)
    client = connect()
    version = registered_version(client, args.model)
    cfg = candidate(client, client.get_run(version.tags[TAG_SOURCES].split(",")[0])).cfg
    val = load_training_data(cfg.data, cfg.search.seed).val
    _, held = reference_split(val.labels, val.groups)
    test = load_split(open_source(args.data), "test", size, channels).data
    parts = halves(test.labels, test.groups, 0)
    sources = {"test half A": (test.images[parts[0]], test.groups[parts[0]]),
               "test half B": (test.images[parts[1]], test.groups[parts[1]]),
               "held-out validation": (val.images[held], val.groups[held])}
    if args.other:
        files = image_files([args.other])
        decoded = model.decode([f.read_bytes() for f in files])
        names = [files[i].name for i in decoded.readable]
        sources[args.other.name] = (decoded.arrays[(size, channels)],
                                    np.array([patient_id(n) for n in names]))

    def check(images: np.ndarray, groups: np.ndarray) -> tuple[str, float, float]:
        c = assess_site(model, {(size, channels): images}, groups, scores=False)
        return c.kind, c.source.auc, c.adapted.auc if c.adapted else float("nan")

    print(f"{args.model}: {len(val)} validation images ({len(held)} held out of the "
          f"reference), {len(test)} test images; {args.resamples} subsets of each size\n")
    print(f"| images from | n | {LIKE} | {SHIFTED} | {ANOTHER} | AUC median / 95th / 99th "
          "| adapted AUC median / 95th / 99th |")
    print("|---|---|---|---|---|---|---|")
    for name, (images, groups) in sources.items():
        for n in args.sizes:
            if n > 0.9 * len(groups):
                continue
            started = time.time()
            k = args.other_resamples if args.other and name == args.other.name else args.resamples
            found = [check(images[s], groups[s]) for s in subsets(groups, n, k, n)]
            kinds = [k for k, _, _ in found]
            auc = np.array([a for _, a, _ in found])
            adapted = np.array([a for _, _, a in found])
            share = {k: kinds.count(k) / len(kinds) for k in (LIKE, SHIFTED, ANOTHER)}
            print(f"| {name} | {n} x {k} | {share[LIKE]:.0%} | {share[SHIFTED]:.0%} | "
                  f"{share[ANOTHER]:.0%} | "
                  + " / ".join(f"{q:.3f}" for q in np.percentile(auc, [50, 95, 99])) + " | "
                  + " / ".join(f"{q:.3f}" for q in np.nanpercentile(adapted, [50, 95, 99]))
                  + f" |  <!-- {time.time() - started:.0f} s -->", flush=True)
    rng = np.random.default_rng(0)
    whole = {**{k: v for k, v in sources.items()},
             "test split": (test.images, test.groups),
             "test split, inverted": (255 - test.images, test.groups),
             "test split, noise sd 25": (np.clip(test.images + rng.normal(
                 0, 25, test.images.shape), 0, 255).astype(np.uint8), test.groups)}
    print("\n| images | n | verdict | AUC | adapted AUC |\n|---|---|---|---|---|")
    for name, (images, groups) in whole.items():
        kind, auc, adapted = check(images, groups)
        print(f"| {name} | {len(groups)} | {kind} | {auc:.3f} | {adapted:.3f} |", flush=True)


if __name__ == "__main__":
    main()
