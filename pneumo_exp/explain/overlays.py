"""`pneumo-exp explain`: a Grad-CAM overlay per image for a loaded registered version (one
model, an ensemble: the mean of its members' maps, an adapted version), captioned with the
version's probability and label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from pneumo_exp.config import CLASS_NAMES
from pneumo_exp.data.images import Decoded, Preprocessing, image_files
from pneumo_exp.evaluation import plots
from pneumo_exp.explain.gradcam import caption, grad_cam, grid_figure


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
        plots.close(fig)
        written.append((target, text))
    return written
