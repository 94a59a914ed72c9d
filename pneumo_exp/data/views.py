"""Test-time augmentation: each image scored as a few views (tighter and looser framings,
small shifts) and the probabilities averaged, so a site's other framing moves the score less
(docs/results.md, "The default: three trials, promoted over eight test-time views"). A
view is text, kept in a version's config:

    original        the image as decoded
    crop F          the central F of each side, resized back (0 < F < 1: zoomed in)
    pad F           F of each side added at every edge, edge pixels repeated, resized back
                    (zoomed out; the fill the training augmentation uses)
    shift DY DX     moved down DY and right DX (fractions of the side, negative: up, left),
                    edge pixels repeated
"""

from __future__ import annotations

import numpy as np

from pneumo_exp.grammar import ORIGINAL, read_view

__all__ = ["ORIGINAL", "view_images"]


def view_images(images: np.ndarray, spec: str) -> np.ndarray:
    """`images` (N, H, W, C) as the view `spec`, float32 on the same grey scale; ValueError
    naming the grammar if `spec` is none (the grammar is grammar.read_view's, so a bad view
    stops when the settings are read)."""
    name, args = read_view(spec)
    step = {"crop": _crop, "pad": _pad, "shift": _shift}.get(name)
    x = np.asarray(images, dtype=np.float32)
    return step(x, *args) if step else x


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.image.resize(x, size, interpolation="bilinear"))


def _crop(x: np.ndarray, fraction: float) -> np.ndarray:
    h, w = x.shape[1:3]
    dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)  # as tf.image's
    return _resize(x[:, dh:h - dh, dw:w - dw], (h, w))


def _pad(x: np.ndarray, fraction: float) -> np.ndarray:
    h, w = x.shape[1:3]
    ph, pw = round(h * fraction), round(w * fraction)
    return _resize(np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge"), (h, w))


def _shift(x: np.ndarray, down: float, right: float) -> np.ndarray:
    h, w = x.shape[1:3]
    dy, dx = round(h * down), round(w * right)
    padded = np.pad(x, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top:top + h, left:left + w]
