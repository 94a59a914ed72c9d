"""The data of a search: train and validation, never test. And where the data comes from."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pneumo_exp.config import (
    DATASET_SETTINGS,
    FULL_DATA_DIR,
    SAMPLE_DIR,
    DataConfig,
    dataset_root,
)
from pneumo_exp.data.labeled import LabeledImages
from pneumo_exp.data.sources import SplitData, load_split, open_source
from pneumo_exp.data.split import validation_split
from pneumo_exp.errors import DataError

log = logging.getLogger(__name__)


def resolve_root(root: str | None) -> Path:
    """`dataset_root`, saying in one line when it is the sample and how to use the full
    dataset."""
    path = dataset_root(root)
    if path == SAMPLE_DIR and not root:
        _say_sample()
    return path


@functools.cache
def _say_sample() -> None:
    """Once per process: a command reads the dataset root several times."""
    log.info("Using the bundled sample (%s) and its settings (%s). For the full dataset: "
             "make search DATA=path/to/chest_xray, or put it at %s.", SAMPLE_DIR,
             SAMPLE_DIR / DATASET_SETTINGS, FULL_DATA_DIR)


def check_layout(cfg: DataConfig) -> None:
    """The dataset's layout (train, and val if present), checked from file names only, so a
    wrong folder is reported in a second, before TensorFlow is imported."""
    source = open_source(dataset_root(cfg.root))
    for split in ("train", "val"):
        if split == "train" or source.has_split(split):
            source.entries(split)


@dataclass(frozen=True)
class TrainingData:
    root: Path
    train: LabeledImages
    val: LabeledImages
    loads: dict[str, SplitData] = field(repr=False)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for split in self.loads.values() for s in split.skipped]

    @functools.cached_property
    def fingerprint(self) -> str:
        """Digest of the decoded splits used (names, labels, patients, pixels at the
        preprocessing): what a search trained and validated on, wherever the files lie
        and whatever their modification times."""
        return _joined({k: v.data.digest() for k, v in self.loads.items()})

    @property
    def file_stats_fingerprint(self) -> str:
        """The digest searches recorded before `fingerprint` read the pixels: of the files'
        sizes and modification times (the cache keys); promote still accepts it."""
        return _joined({k: v.fingerprint for k, v in self.loads.items()})

    @property
    def load_seconds(self) -> float:
        return sum(s.seconds for s in self.loads.values())

    @property
    def from_cache(self) -> bool:
        return all(s.from_cache for s in self.loads.values())


def _joined(digests: dict[str, str]) -> str:
    """One digest of the splits' digests, in split order."""
    joined = ",".join(f"{k}:{v}" for k, v in sorted(digests.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def load_training_data(cfg: DataConfig, seed: int) -> TrainingData:
    """Train and validation images. Validation is cut from train by patient, plus official val/,
    or (validation: official) the official val/ alone. The test split is not read."""
    root = resolve_root(cfg.root)
    source = open_source(root)
    loads = {"train": load_split(source, "train", cfg.image_size, cfg.channels)}
    if source.has_split("val"):
        loads["val"] = load_split(source, "val", cfg.image_size, cfg.channels)
    elif cfg.validation == "official":
        raise DataError(f"{root} has no val split, and data.validation is 'official'. "
                        "Use data.validation: split to cut validation from train.")
    full_train = loads["train"].data
    if cfg.validation == "official":
        train, val = full_train, loads["val"].data
    else:
        train_idx, val_idx = validation_split(full_train.labels, full_train.groups,
                                              cfg.val_fraction, seed, "val" not in loads)
        train, val = full_train.subset(train_idx), full_train.subset(val_idx)
        if "val" in loads:
            val = LabeledImages.concat(val, loads["val"].data)
    data = TrainingData(root=root, train=train, val=val, loads=loads)
    for name, reason in data.skipped:
        log.warning("skipped %s: %s", name, reason)
    if data.skipped:
        log.warning("%d unreadable files skipped (listed above).", len(data.skipped))
    return data
