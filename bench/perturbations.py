"""Validation as a new site would show it: the changes another hospital's images bring,
made on the validation images themselves, and the figures a search could rank by.

A configuration that holds on new patients should hold on validation images framed,
exposed, blurred, marked and noised as another site's are. Each perturbation acts on the
decoded images (uint8, the model's input size), deterministically:

    crop 0.8          framed tighter (the central 80% of each side, resized back)
    pad 0.15          framed looser (15% of each side added, edge pixels repeated)
    wide 1.15         the anatomy 15% wider (a file of another shape squeezed to a square)
    gamma 0.7, 1.4    another tone curve
    contrast 0.7      a flatter image (30% less contrast around its mean)
    blur 1            a softer detector (Gaussian, sigma 1 px)
    noise 10          a noisier detector (Gaussian, sd 10 grey levels)
    marker            burned-in text: a bright label with dark strokes in a corner

`robustness_figures` scores a model's probabilities on the clean and the perturbed copies
and returns the candidate objectives named in CANDIDATES (docs/results.md, "An objective
that sees new patients", says which ranked configurations by how they held).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from pneumo_exp.evaluation.metrics import spec_at_sens

Perturbation = Callable[[np.ndarray], np.ndarray]  # (N, H, W, C) uint8 -> the same


def _resized(x: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    out = []
    for image in x:
        channels = [np.asarray(Image.fromarray(image[..., c]).resize(
            (width, height), Image.Resampling.BILINEAR)) for c in range(image.shape[-1])]
        out.append(np.stack(channels, axis=-1))
    return np.stack(out)


def _crop(x: np.ndarray, fraction: float) -> np.ndarray:
    h, w = x.shape[1:3]
    dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
    return _resized(x[:, dh:h - dh, dw:w - dw], h, w)


def _pad(x: np.ndarray, fraction: float) -> np.ndarray:
    h, w = x.shape[1:3]
    ph, pw = round(h * fraction), round(w * fraction)
    return _resized(np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge"), h, w)


def _wide(x: np.ndarray, factor: float) -> np.ndarray:
    h, w = x.shape[1:3]
    wider = _resized(x, h, round(w * factor))
    left = (wider.shape[2] - w) // 2
    return wider[:, :, left:left + w]


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    return np.clip(255.0 * (x / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


def _contrast(x: np.ndarray, factor: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(mean + factor * (x - mean) + 0.5, 0, 255).astype(np.uint8)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0)) + 0.5,
                   0, 255).astype(np.uint8)


def _noise(x: np.ndarray, sd: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(x + rng.normal(0, sd, x.shape) + 0.5, 0, 255).astype(np.uint8)


def _marker(x: np.ndarray) -> np.ndarray:
    """A bright label (a tenth of the width, a twentieth of the height) with dark strokes,
    top left, as burned-in text or a laterality marker."""
    out = x.copy()
    h, w = x.shape[1:3]
    lh, lw = max(3, h // 20), max(4, w // 10)
    top, left = max(1, h // 30), max(1, w // 30)
    out[:, top:top + lh, left:left + lw] = 235
    out[:, top + 1:top + lh - 1, left + 1:left + lw - 1:3] = 30
    return out


PERTURBATIONS: dict[str, Perturbation] = {
    "crop 0.8": lambda x: _crop(x, 0.8),
    "pad 0.15": lambda x: _pad(x, 0.15),
    "wide 1.15": lambda x: _wide(x, 1.15),
    "gamma 0.7": lambda x: _gamma(x, 0.7),
    "gamma 1.4": lambda x: _gamma(x, 1.4),
    "contrast 0.7": lambda x: _contrast(x, 0.7),
    "blur 1": lambda x: _blur(x, 1.0),
    "noise 10": lambda x: _noise(x, 10.0),
    "marker": _marker,
}

CANDIDATES = {  # name -> what it measures (higher is better for every one)
    "val_auc": "AUC on the clean validation images (the objective so far)",
    "val_spec_at_sens": "specificity at sensitivity 0.95, clean",
    "perturbed_auc_mean": "AUC under each perturbation, the mean",
    "perturbed_auc_worst": "AUC under each perturbation, the worst",
    "perturbed_spec_mean": "specificity at sensitivity 0.95 under each perturbation, the mean",
    "perturbed_spec_worst": "the same, the worst",
    "pooled_auc": "AUC of the clean and every perturbed copy pooled into one set: the "
                  "ranking across perturbations, so a change that moves all scores counts",
    "pooled_spec": "specificity at sensitivity 0.95 on the pooled set",
    "gap_auc": "minus the drop from clean AUC to the perturbed mean",
    "stability": "minus the mean absolute change of a probability under a perturbation",
}


def perturbed_sets(images: np.ndarray) -> dict[str, np.ndarray]:
    """The clean images and each perturbation of them, by name."""
    return {"clean": images, **{name: f(images) for name, f in PERTURBATIONS.items()}}


def robustness_figures(labels: np.ndarray, prob: dict[str, np.ndarray],
                       sensitivity_target: float = 0.95) -> dict[str, float]:
    """The candidates of CANDIDATES from a model's probabilities on each set of
    `perturbed_sets` (by the same names)."""
    clean = prob["clean"]
    names = [n for n in prob if n != "clean"]
    auc = {n: float(roc_auc_score(labels, prob[n])) for n in prob}
    spec = {n: spec_at_sens(labels, prob[n], sensitivity_target) for n in prob}
    pooled_y = np.concatenate([labels] * len(prob))
    pooled_p = np.concatenate([prob[n] for n in prob])
    mean_auc = float(np.mean([auc[n] for n in names]))
    return {"val_auc": auc["clean"], "val_spec_at_sens": spec["clean"],
            "perturbed_auc_mean": mean_auc,
            "perturbed_auc_worst": float(min(auc[n] for n in names)),
            "perturbed_spec_mean": float(np.mean([spec[n] for n in names])),
            "perturbed_spec_worst": float(min(spec[n] for n in names)),
            "pooled_auc": float(roc_auc_score(pooled_y, pooled_p)),
            "pooled_spec": spec_at_sens(pooled_y, pooled_p, sensitivity_target),
            "gap_auc": mean_auc - auc["clean"],
            "stability": -float(np.mean([np.abs(prob[n] - clean).mean() for n in names]))}
