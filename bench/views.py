"""Test-time views and threshold rules, judged on the versions bench/seeds.py registered,
without training again.

    .venv/bin/python bench/views.py --work bench-seeds/default bench-seeds/confirm \
        [--min-sensitivity 0.9 0.875 0.85]

For every seed folder under each --work: its `pneumonia-classifier@champion` members score
validation (rebuilt as promote rebuilds it) and the test split's two patient halves
(bench/new_site.py's halves, as registered and adapted on the other half) at every view of
VIEW_SETS. Each view set and validation sensitivity is then promoted as promote does (the
members' mean over the views, a temperature and the threshold fitted on validation only)
and scored on the halves, pooled. The members' scores are kept in each seed folder
(views.npz), so a second run only recomputes the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
from new_site import CEILING_SENSITIVITY, FIGURES, halves

from pneumo_exp.config import load_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT = load_config("aug_cnn").registry.views
VIEW_SETS = {  # one view; the framings alone; the default's (framings and shifts)
    "original": ["original"],
    "framings": [v for v in DEFAULT if not v.startswith("shift")],
    "the default's": DEFAULT,
}
SCORES = "views.npz"
MODEL = "models:/pneumonia-classifier@champion"


def member_scores(seed_dir: Path) -> dict[str, np.ndarray]:
    """Each member's probabilities (members x images) per view: validation, test as
    registered, and test adapted per half; read from SCORES when there."""
    cached = seed_dir / SCORES
    if cached.is_file():
        with np.load(cached) as z:
            return {k: z[k] for k in z.files}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{seed_dir.resolve() / 'mlruns' / 'mlflow.db'}"
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.data.views import view_images
    from pneumo_exp.registry.selection import candidate
    from pneumo_exp.serving.batch_norm import adapt_batch_norm
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_SOURCES
    from pneumo_exp.tracking.store import connect

    client = connect()
    version = registered_version(client, MODEL)
    first = candidate(client, client.get_run(version.tags[TAG_SOURCES].split(",")[0]))
    val = load_training_data(first.cfg.data, first.cfg.search.seed).val
    root = Path(first.search.data.params["data.source"])
    test = load_split(open_source(root), "test", first.cfg.data.image_size,
                      first.cfg.data.channels).data
    parts = halves(test.labels, test.groups, 0)
    views = sorted({v for vs in VIEW_SETS.values() for v in vs})

    def predict(members: list, images: np.ndarray, view: str) -> np.ndarray:
        x = view_images(images, view)
        return np.stack([m.model.predict(x, batch_size=256, verbose=0).ravel()
                         for m in members])

    model = classifier(load(MODEL))
    scores = {"val_labels": val.labels, "test_labels": test.labels,
              "half_a": parts[0], "half_b": parts[1]}
    for view in views:
        scores[f"val|{view}"] = predict(model.members, val.images, view)
        scores[f"registered|{view}"] = predict(model.members, test.images, view)
        scores[f"adapted|{view}"] = np.zeros_like(scores[f"registered|{view}"])
    for i, part in enumerate(parts):
        site = classifier(load(MODEL))  # a fresh copy for each half
        for m in site.members:
            adapt_batch_norm(m.model, test.images[parts[1 - i]])
        for view in views:
            scores[f"adapted|{view}"][:, part] = predict(site.members, test.images[part], view)
    np.savez(cached, **scores)
    return scores


def judged(scores: dict[str, np.ndarray], views: list[str], min_sensitivity: float
           ) -> dict[str, dict[str, float]]:
    """The figures on the pooled halves, as registered and adapted, of the version promote
    would make with these views and this validation sensitivity."""
    from pneumo_exp.evaluation.metrics import binary_metrics, spec_at_sens
    from pneumo_exp.evaluation.noise import Scored
    from pneumo_exp.registry.promote import calibrate

    def mean(key: str) -> np.ndarray:
        return np.mean([scores[f"{key}|{v}"] for v in views], axis=(0, 1))

    calibration = calibrate(Scored(scores["val_labels"], mean("val")), min_sensitivity)
    y = scores["test_labels"]
    out = {}
    for how in ("registered", "adapted"):
        prob = calibration.apply(Scored(y, mean(how)))
        f = binary_metrics(y, prob, calibration.threshold)
        out[how] = {**{k: f[k] for k in FIGURES},
                    "ceiling": spec_at_sens(y, prob, CEILING_SENSITIVITY)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, nargs="+", required=True,
                        help="bench/seeds.py folders (each holding seed-N folders)")
    parser.add_argument("--min-sensitivity", type=float, nargs="+", default=[0.9, 0.875, 0.85])
    args = parser.parse_args()
    from pneumo_exp.cli.tf_import import import_tensorflow
    import_tensorflow()
    # every member and view traces its own predict function; TensorFlow calls it retracing
    logging.getLogger("tensorflow").addFilter(lambda r: "retracing" not in r.getMessage())

    seeds = sorted((d for w in args.work for d in w.glob("seed-*") if (d / "mlruns").is_dir()),
                   key=lambda d: (str(d.parent), int(d.name.split("-")[1])))
    if not seeds:
        sys.exit(f"no seed-N folders with an mlruns/ store under {args.work}")
    scores = {}
    for d in seeds:
        print(f"scoring {d} ...", file=sys.stderr, flush=True)
        scores[d] = member_scores(d)
    names = ", ".join(d.name.split("-")[1] for d in seeds)
    print(f"Seeds {names}; accuracy / sensitivity / specificity / AUC on the pooled test "
          "halves (mean over seeds), each seed's adapted specificity, and the lowest\n")
    print("| views | validation sensitivity | as registered | adapted | adapted specificity "
          "per seed | lowest | best spec at sens >= 0.95 |")
    print("|---|---|---|---|---|---|---|")
    for set_name, views in VIEW_SETS.items():
        for target in args.min_sensitivity:
            rows = [judged(scores[d], views, target) for d in seeds]
            cells = []
            for how in ("registered", "adapted"):
                cells.append(" / ".join(f"{np.mean([r[how][k] for r in rows]):.3f}"
                                        for k in FIGURES))
            spec = [r["adapted"]["specificity"] for r in rows]
            ceiling = np.mean([r["adapted"]["ceiling"] for r in rows])
            print(f"| {set_name} | {target} | {cells[0]} | {cells[1]} | "
                  + ", ".join(f"{s:.3f}" for s in spec) + f" | {min(spec):.3f} | "
                  f"{ceiling:.3f} |", flush=True)


if __name__ == "__main__":
    main()
