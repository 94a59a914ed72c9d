"""A MedMNIST-style file (PneumoniaMNIST's layout) built from a Kaggle-layout folder, to
check a default on 28x28 images where the official file cannot be downloaded.

    .venv/bin/python bench/pneumoniamnist.py ../shared/data/chest_xray pneumoniamnist_local.npz

As MedMNIST v2 built PneumoniaMNIST: the source's train split cut 9:1 into train and val
(seeded, classes kept), its test split as test, each image grey and resized to 28x28
(centre square crop, then a box filter as MedMNIST's resize to 28). Then, for example:

    make search ARCH=aug_cnn DATA=pneumoniamnist_local.npz && make promote
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from pneumo_exp.config import CLASS_NAMES

SIZE = 28


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as im:
                im = im.convert("L")
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side))
                images.append(np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BOX)))
            labels.append(label)
    return np.stack(images).astype(np.uint8), np.array(labels, np.uint8)[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a folder with train/ and test/ (NORMAL, PNEUMONIA)")
    ap.add_argument("out", type=Path, help="the .npz to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train_x, train_y = load(args.source / "train")
    test_x, test_y = load(args.source / "test")
    tr_x, va_x, tr_y, va_y = train_test_split(train_x, train_y, test_size=0.1,
                                              stratify=train_y[:, 0], random_state=args.seed)
    np.savez_compressed(args.out, train_images=tr_x, train_labels=tr_y, val_images=va_x,
                        val_labels=va_y, test_images=test_x, test_labels=test_y)
    print(f"{args.out}: train {len(tr_y)}, val {len(va_y)}, test {len(test_y)} at {SIZE}x{SIZE}")


if __name__ == "__main__":
    main()
