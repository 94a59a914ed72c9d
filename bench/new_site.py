"""The "new site" protocol: how a registered version holds on patients of another site, with
and without adaptation to that site's unlabeled images.

    .venv/bin/python bench/new_site.py --model models:/pneumonia-classifier@champion \
        [--compare models:/pneumonia-classifier/3 ...] [--seed 0]

The test split of the version's dataset (the only split its training never saw) is cut by
patient into two seeded halves, stratified by class. Each half plays a new site: the
version is adapted (as `pneumo-exp adapt` does, without registering)
on the *other* half's images, labels unread, and scored on this half; then the halves swap.
Every figure is at the version's stored threshold; "pooled" scores both halves' adapted
predictions together. The unadapted version is scored on the same halves beside it, and
so is every --compare version. The pooled figures are saved on each version (tag
pneumo.new_site) and in its model card. The last column, the best specificity any
threshold gives at sensitivity >= 0.95 on the pooled halves, reads the labels and is no
operating point: it says whether the ranking or the stored threshold limits specificity.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIGURES = ("accuracy", "sensitivity", "specificity", "auc")
CEILING_SENSITIVITY = 0.95  # the sensitivity the defaults are held to on new patients
CEILING = "best_spec_at_sens"  # its key among the pooled figures saved on a version


def with_new_site(card: str, figures: Mapping[str, Any]) -> str:
    """A version's model card with this protocol's pooled figures added (or replaced)."""
    marker = "\n**Measured on a new site**"
    card = card.split(marker)[0].rstrip() + "\n"
    rows = "\n".join(f"| {k} | {v['accuracy']:.3f} | {v['sensitivity']:.3f} | "
                     f"{v['specificity']:.3f} | {v['auc']:.3f} |" for k, v in figures.items())
    return (card + f"{marker} (bench/new_site.py: the test split cut by patient into two "
            "halves, adapted on one and scored on the other, and back; pooled, at the stored "
            f"threshold):\n\n| variant | accuracy | sensitivity | specificity | AUC |\n"
            f"|---|---|---|---|---|\n{rows}\n")


def halves(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[np.ndarray]:
    """Two halves of the images, no patient in both, the class ratio kept."""
    from pneumo_exp.data.split import group_codes, group_kfold

    folds = group_kfold(2, seed)
    return [part for _, part in folds.split(np.zeros(len(labels)), labels,
                                            group_codes(groups))]


def score(uri: str, images: list[bytes], parts: list[np.ndarray], adapt: bool) -> tuple[
        np.ndarray, float]:
    """Probabilities of every test image, each half scored by the version (adapted on the
    other half if `adapt`), and the version's threshold."""
    from pneumo_exp.serving.batch_norm import adapt_batch_norm
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    prob = np.zeros(len(images))
    for i, part in enumerate(parts):
        model = classifier(load(uri))  # a fresh copy for each site
        if adapt:
            other = model.decode([images[j] for j in parts[1 - i]]).arrays
            for m in model.members:
                adapt_batch_norm(m.model, other[m.preprocessing])
        decoded = model.decode([images[j] for j in part])
        assert len(decoded.readable) == len(part), "a test image became unreadable"
        prob[part] = model.probabilities(decoded.arrays)
    return prob, model.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/pneumonia-classifier@champion")
    parser.add_argument("--compare", nargs="*", default=[], help="other versions to score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient halves")
    parser.add_argument("--data", type=Path, help="dataset root (default: the version's)")
    args = parser.parse_args()

    from pneumo_exp.cli.tf_import import import_tensorflow
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.evaluation.metrics import binary_metrics, spec_at_sens
    from pneumo_exp.registry import model_card
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_NEW_SITE, TAG_SEARCH_RUNS
    from pneumo_exp.tracking.store import connect
    import_tensorflow()

    client = connect()
    version = registered_version(client, args.model)
    search = client.get_run(version.tags[TAG_SEARCH_RUNS].split(",")[0])
    root = args.data or Path(search.data.params["data.source"])
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder dataset: the protocol reads the test files.")
    test = load_split(open_source(root), "test", 32, 1).data  # names, labels, patients
    names, labels, groups = list(test.names), test.labels, test.groups
    images = [(root / name).read_bytes() for name in names]
    parts = halves(labels, groups, args.seed)
    print(f"{root}/test: {len(names)} images of {len(set(groups))} patients, halves of "
          f"{len(parts[0])} and {len(parts[1])} (seed {args.seed}); figures at each version's "
          "stored threshold\n")
    print("| version | adapted | half A acc / sens / spec / AUC | half B | pooled "
          f"| best spec at sens >= {CEILING_SENSITIVITY} |")
    print("|---|---|---|---|---|---|")
    for uri in [args.model, *args.compare]:
        found = registered_version(client, uri)
        name, number = found.name, str(found.version)
        pooled: dict[str, dict[str, float]] = {}
        for adapt in (False, True):
            try:
                prob, threshold = score(uri, images, parts, adapt)
            except ValueError as e:  # nothing to adapt (no batch normalization)
                if not adapt:
                    raise
                print(f"| {uri} (v{number}) | yes | {str(e).splitlines()[0][:60]} | | | |")
                continue
            cells = []
            for part in (*parts, np.arange(len(labels))):
                f = binary_metrics(labels[part], prob[part], threshold)
                cells.append(" / ".join(f"{f[k]:.3f}" for k in FIGURES))
            f = binary_metrics(labels, prob, threshold)
            ceiling = spec_at_sens(labels, prob, CEILING_SENSITIVITY)
            cells.append(f"{ceiling:.3f}")
            pooled["adapted" if adapt else "as registered"] = {
                **{k: f[k] for k in FIGURES}, CEILING: round(ceiling, 4)}
            print(f"| {uri} (v{number}) | {'yes' if adapt else 'no'} | " + " | ".join(cells)
                  + " |", flush=True)
        client.set_model_version_tag(name, number, TAG_NEW_SITE,
                                     json.dumps({"seed": args.seed, **pooled}))
        v = client.get_model_version(name, number)
        model_card.publish(client, name, number, with_new_site(
            v.description or "", pooled), v.run_id)


if __name__ == "__main__":
    main()
