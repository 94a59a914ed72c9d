"""How a registered model's validation figures move when the images come from another scanner.

    .venv/bin/python bench/robustness.py --model models:/pneumonia-classifier@champion

The validation images of the version's search (rebuilt from its configuration; never the
test split) are re-encoded with one perturbation at a time, at their file's resolution,
and sent through the registered pyfunc model, i.e. through the deployed preprocessing:
other shapes of the original file (wider, narrower, taller, shorter, all squeezed back to
a square), other framing (zoom), other tone curves, sharpness and noise. A model that calls
a perturbed NORMAL image pneumonia has learned the look of the training scanner, which is
what the test split's shift punishes. Prints a markdown table: the validation AUC,
sensitivity and specificity at the version's threshold, and the mean probability of
pneumonia of each class.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _resized(im: Image.Image, ax: float, ay: float) -> Image.Image:
    """Scale width by `ax` and height by `ay`, then crop or edge-pad back to the old size."""
    w, h = im.size
    a = np.asarray(im.resize((round(w * ax), round(h * ay)), Image.Resampling.BILINEAR))
    ph, pw = max(h - a.shape[0], 0), max(w - a.shape[1], 0)
    a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")
    y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return Image.fromarray(a[y0:y0 + h, x0:x0 + w])


def _noise(im: Image.Image, sigma: float) -> Image.Image:
    a = np.asarray(im, dtype=np.float64) + np.random.default_rng(0).normal(0, sigma, im.size[::-1])
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda im: im,
    "wider x1.15": lambda im: _resized(im, 1.15, 1.0),
    "narrower x0.85": lambda im: _resized(im, 0.85, 1.0),
    "taller x1.15": lambda im: _resized(im, 1.0, 1.15),
    "shorter x0.85": lambda im: _resized(im, 1.0, 0.85),
    "zoom in x1.15": lambda im: _resized(im, 1.15, 1.15),
    "zoom out x0.85": lambda im: _resized(im, 0.85, 0.85),
    "gamma 0.7": lambda im: im.point(lambda v: 255 * (v / 255) ** 0.7),
    "gamma 1.4": lambda im: im.point(lambda v: 255 * (v / 255) ** 1.4),
    "blur (0.5% of the side)": lambda im: im.filter(ImageFilter.GaussianBlur(im.size[0] / 200)),
    "sharpen": lambda im: im.filter(ImageFilter.SHARPEN),
    "noise (sd 8)": lambda im: _noise(im, 8.0),
}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/pneumonia-classifier@champion",
                        help="a registered version: models:/NAME@ALIAS, models:/NAME/VERSION, "
                        "models:/NAME/latest")
    parser.add_argument("--data", type=Path, help="the dataset folder (default: the search's)")
    args = parser.parse_args()

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from pneumo_exp.cli.tf_import import import_tensorflow
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.evaluation.metrics import binary_metrics
    from pneumo_exp.registry.selection import candidate
    from pneumo_exp.tracking.model_uri import registered_version
    from pneumo_exp.tracking.names import TAG_ARCH, TAG_SOURCES
    from pneumo_exp.tracking.store import connect
    import_tensorflow()
    from pneumo_exp.serving.predict import load

    client: MlflowClient = connect()
    version = registered_version(client, args.model)
    first_trial = version.tags[TAG_SOURCES].split(",")[0]
    cfg = candidate(client, client.get_run(first_trial)).cfg
    if args.data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(args.data)))
    data = load_training_data(cfg.data, cfg.search.seed)
    if not (data.root / str(data.val.names[0])).is_file():
        raise SystemExit(f"{data.root} is not a folder dataset: the perturbations need files.")
    model = load(args.model)
    threshold = float(model.model_config["threshold"])  # as predict and evaluate read it
    originals = [Image.open(data.root / str(n)).convert("L") for n in data.val.names]
    print(f"{args.model} (version {version.version}, {version.tags.get(TAG_ARCH)}), "
          f"validation of its search: {len(data.val)} images {data.val.class_counts()}, "
          f"threshold {threshold:.3f}\n")
    print("| perturbation | val AUC | sensitivity | specificity | mean p NORMAL | "
          "mean p PNEUMONIA |\n|---|---|---|---|---|---|")
    y = data.val.labels
    for label, perturb in PERTURBATIONS.items():
        frame = pd.DataFrame({"image": [_png(perturb(im)) for im in originals]})
        p = model.predict(frame)["probability"].to_numpy(dtype=float)
        f = binary_metrics(y, p, threshold)
        print(f"| {label} | {f['auc']:.4f} | {f['sensitivity']:.3f} | {f['specificity']:.3f} | "
              f"{p[y == 0].mean():.3f} | {p[y == 1].mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
