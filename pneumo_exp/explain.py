"""`pneumo-exp explain`: a Grad-CAM overlay per image for any registered version (one
model, an ensemble: the mean of its members' maps, an adapted version), captioned with the
version's probability and label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from pneumo_exp import plots
from pneumo_exp.gradcam import caption, grad_cam, grid_figure
from pneumo_exp.inference import image_files, load
from pneumo_exp.serving import classifier


def explain_files(model_uri: str, paths: Sequence[str], out: Path) -> list[tuple[Path, str]]:
    """Write out/<file stem>_gradcam.png per readable image; returns (path, caption)."""
    model = classifier(load(model_uri))
    files = image_files(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        batches, readable = model.decode([f.read_bytes()])
        if not readable:
            written.append((f, "unreadable: not an image"))
            continue
        prob = float(model.probabilities(batches)[0])
        positive = np.array([prob >= model.threshold])
        size = max(m.image_size for m in model.members)
        maps = []
        for m in model.members:
            cam, _ = grad_cam(m.model, batches[m.preprocessing], positive)
            maps.append(tf.image.resize(cam[..., None], (size, size))[..., 0].numpy())
        cam = np.mean(maps, axis=0)
        shown = next(b for (s, _), b in batches.items() if s == size)
        text = caption(prob, model.threshold)
        fig = grid_figure(shown, cam, [f"{f.name}: {text}"],
                          f"Grad-CAM of {model_uri}: evidence for "
                          f"{'PNEUMONIA' if positive[0] else 'NORMAL'}", columns=1, cell=4.5)
        target = out / f"{f.stem}_gradcam.png"
        fig.savefig(target, dpi=120)
        plots.close(fig)
        written.append((target, text))
    return written
