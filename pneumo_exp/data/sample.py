"""Build the small bundled sample from a full dataset folder, by whole patients."""

from __future__ import annotations

import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

from pneumo_exp.config import CLASS_NAMES, SPLITS
from pneumo_exp.data.images import UnreadableImageError, decode_image
from pneumo_exp.data.sources import FolderSource
from pneumo_exp.data.split import patient_id
from pneumo_exp.errors import DataError
from pneumo_exp.fileio import write_text_atomic

# Images per split and class (NORMAL, PNEUMONIA); the official val split has 8 + 8. At 64 px
# a PNG is about 2.5 kB: enough patients for a validation split whose AUC means something,
# under 5 MB in git.
DEFAULT_COUNTS = {"train": (500, 1000), "val": (8, 8), "test": (100, 100)}
DEFAULT_SIZE = 64

README = """\
# Bundled sample of the chest X-ray dataset

{total} grayscale {size}x{size} PNGs taken from the Kermany et al. (2018) pediatric chest
X-ray dataset ("Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification", Mendeley Data, https://doi.org/10.17632/rscbjbr9sj.2, licence CC BY 4.0;
the same images as Kaggle's "Chest X-Ray Images (Pneumonia)"), in its folder layout:

| split | NORMAL | PNEUMONIA |
|---|---|---|
{rows}

Whole patients were drawn at random (seed {seed}) from each split of the source, so no
patient is in two splits and the patient ids in the file names still group the images.
It is for trying the tool and for tests: a first search on it takes minutes and shows what
the tool does; a model worth using needs the full dataset (the project's README says how).
`pneumo-exp.yaml` holds the settings that fit it (small images, short trials), which
searches of this folder use over experiments/<arch>.yaml.

Rebuilt with: `pneumo-exp data sample --from path/to/chest_xray --to data/sample`
"""


def build_sample(source_root: Path, dest: Path, image_size: int | None = None, seed: int = 0,
                 counts: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    """Write dest/{train,val,test}/{NORMAL,PNEUMONIA}/*.png and dest/README.md."""
    counts = counts or DEFAULT_COUNTS
    image_size = image_size or DEFAULT_SIZE
    FolderSource(source_root)  # layout check with a clear message
    rng = random.Random(seed)
    if dest.exists():
        shutil.rmtree(dest)
    written: dict[str, tuple[int, int]] = {}
    for split in SPLITS:
        per_class = []
        for label, cls in enumerate(CLASS_NAMES):
            class_dir = source_root / split / cls
            if not class_dir.is_dir():
                raise DataError(f"{class_dir} is missing; the sample needs every split and class.")
            by_patient: dict[str, list[Path]] = defaultdict(list)
            for path in sorted(class_dir.iterdir()):
                by_patient[patient_id(path.name)].append(path)
            patients = sorted(by_patient)
            rng.shuffle(patients)
            out_dir = dest / split / cls
            out_dir.mkdir(parents=True, exist_ok=True)
            n = 0
            for patient in patients:
                if n >= counts[split][label]:
                    break
                for path in by_patient[patient]:
                    try:
                        arr = decode_image(path, image_size, 1)
                    except UnreadableImageError:
                        continue
                    Image.fromarray(arr[..., 0]).save(out_dir / f"{path.stem}.png", optimize=True)
                    n += 1
            per_class.append(n)
        written[split] = (per_class[0], per_class[1])
    rows = "\n".join(f"| {s} | {a} | {b} |" for s, (a, b) in written.items())
    write_text_atomic(dest / "README.md", README.format(
        total=sum(a + b for a, b in written.values()), size=image_size, rows=rows, seed=seed))
    return written
