"""Grad-CAM (Selvaraju et al. 2017): where in the image a model found the evidence for its
answer: the last spatial feature map (`feature_layer`, no per-model setting; for the dense
baselines the scaled image itself, a gradient saliency map), weighted per channel by the
mean gradient of the answer's logit (the negative logit for NORMAL), rectified, upsampled
to the image and scaled to [0, 1]. An ensemble's map is the mean of its members'."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.images import Decoded, Preprocessing, image_files
from pneumo_exp.evaluation.plots import plt  # with the Agg backend, set there


def feature_layer(model: keras.Model) -> keras.Layer:
    """The last layer of `model`'s graph with a spatial output (batch, H, W, C), H, W > 1,
    that another layer reads."""
    found = None
    for layer in model.layers[:-1]:
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1:
            found = layer
    if found is None:
        raise ValueError(f"model '{model.name}' has no spatial feature map to explain.")
    return found


def grad_cam(model: keras.Model, images: np.ndarray, positive: np.ndarray | None = None,
             batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(maps, probabilities): a map per image of the model's input size, in [0, 1], of the
    evidence for PNEUMONIA where `positive` is true and for NORMAL elsewhere (default: the
    answer at 0.5)."""
    # The map as this graph holds it: the input of the layer that reads it (a nested model's
    # `output` is a tensor of its own graph). The network is cut there: gradients flow from
    # the head's output to its input.
    tensor = model.layers[model.layers.index(feature_layer(model)) + 1].input
    body = keras.Model(model.inputs, tensor)
    head = keras.Model(tensor, model.output)
    maps, probs = [], []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start:start + batch_size].astype(np.float32))
        features = body(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(features)
            prob = head(features, training=False)
            p = tf.clip_by_value(tf.reshape(prob, [-1]), 1e-6, 1 - 1e-6)
            logit = tf.math.log(p) - tf.math.log1p(-p)
            sign = (tf.convert_to_tensor(positive[start:start + batch_size], tf.float32) * 2 - 1
                    if positive is not None else tf.sign(p - 0.5))
            target = tf.reduce_sum(logit * sign)
        grads = tape.gradient(target, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
        top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        maps.append(np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0))
        probs.append(p.numpy())
    return np.concatenate(maps), np.concatenate(probs)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The X-ray in gray with the map in the jet colormap over it, as RGB floats."""
    gray = image.mean(axis=-1) if image.ndim == 3 else image
    gray = np.repeat((gray / 255.0)[..., None], 3, axis=-1)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    weight = alpha * np.clip(cam, 0, 1)[..., None] ** 0.5
    return np.clip(gray * (1 - weight) + heat * weight, 0, 1)


def caption(prob: float, threshold: float, truth: int | None = None) -> str:
    text = f"{CLASS_NAMES[int(prob >= threshold)]} p={prob:.2f}"
    return text if truth is None else f"{text}, true {CLASS_NAMES[truth]}"


def grid_figure(images: np.ndarray, maps: np.ndarray, captions: Sequence[str],
                title: str, columns: int = 4, cell: float = 2.6) -> Figure:
    """Overlays in a labelled grid (one figure per kind: false positives, ...), each `cell`
    inches wide; titles wrap to stay inside the figure."""
    n = max(len(images), 1)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, (cell + 0.3) * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, cam, text in zip(axes.ravel(), images, maps, captions, strict=False):
        ax.imshow(overlay(image, cam))
        ax.set_title(textwrap.fill(text, int(14 * cell)), fontsize=8)
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(textwrap.fill(title, int(11 * cell * columns)), fontsize=10)
    fig.tight_layout()
    return fig


def review_sets(labels: np.ndarray, prob: np.ndarray, k: int,
                threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Indices of the k most confident false positives and false negatives, and of k images
    answered right (the most confident of each class, half and half)."""
    pred = prob >= threshold
    fp = np.flatnonzero((labels == 0) & pred)
    fn = np.flatnonzero((labels == 1) & ~pred)
    tp = np.flatnonzero((labels == 1) & pred)
    tn = np.flatnonzero((labels == 0) & ~pred)
    return {"false_positives": fp[np.argsort(-prob[fp])][:k],
            "false_negatives": fn[np.argsort(prob[fn])][:k],
            "correct": np.concatenate([tp[np.argsort(-prob[tp])][:(k + 1) // 2],
                                       tn[np.argsort(prob[tn])][:k // 2]])}


def review_figures(model: keras.Model, images: np.ndarray, labels: np.ndarray,
                   prob: np.ndarray, k: int, title: str) -> dict[str, Figure]:
    """One grid per kind (false positives, false negatives, correct) for a trial's run."""
    figures = {}
    for kind, index in review_sets(labels, prob, k).items():
        maps, p = grad_cam(model, images[index]) if len(index) else (np.zeros((0,)), [])
        words = kind.replace("_", " ")
        figures[kind] = grid_figure(images[index], maps,
                                    [caption(pi, 0.5, int(labels[i]))
                                     for pi, i in zip(p, index, strict=True)],
                                    f"Grad-CAM, {words} on validation (threshold 0.5), {title}")
    return figures


class Classifier(Protocol):
    """What explain needs of a version (serving.model.PneumoniaClassifier has it)."""

    members: Sequence[Any]  # each with .model, .image_size, .preprocessing
    threshold: float

    def decode(self, images: Sequence[Any]) -> Decoded: ...
    def probabilities(self, arrays: Mapping[Preprocessing, np.ndarray]) -> np.ndarray: ...


def explain_files(model: Classifier, name: str, paths: Sequence[str],
                  out: Path) -> list[tuple[Path, str]]:
    """Write out/<file stem>_gradcam.png per readable image; returns (path, caption).
    `name` says which model in the figure's title."""
    files = image_files(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        decoded = model.decode([f.read_bytes()])
        if not decoded.readable:
            written.append((f, f"unreadable: {decoded.skipped[0][1]}"))
            continue
        prob = float(model.probabilities(decoded.arrays)[0])
        positive = np.array([prob >= model.threshold])
        size = max(m.image_size for m in model.members)
        maps = []
        for m in model.members:
            cam, _ = grad_cam(m.model, decoded.arrays[m.preprocessing], positive)
            maps.append(tf.image.resize(cam[..., None], (size, size))[..., 0].numpy())
        cam = np.mean(maps, axis=0)
        shown = next(a for (s, _), a in decoded.arrays.items() if s == size)
        text = caption(prob, model.threshold)
        fig = grid_figure(shown, cam, [f"{f.name}: {text}"],
                          f"Grad-CAM of {name}: evidence for "
                          f"{CLASS_NAMES[int(positive[0])]}", columns=1, cell=4.5)
        target = out / f"{f.stem}_gradcam.png"
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append((target, text))
    return written
