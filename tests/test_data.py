import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import add_bad_files, make_folder_dataset

from pneumo_exp.config import DataConfig
from pneumo_exp.data import dataset
from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.data.sources import load_split, open_source
from pneumo_exp.data.split import patient_id, validation_split
from pneumo_exp.errors import DataError


def test_loader_sizes_labels_and_names(tiny_dataset: Path, tmp_path: Path) -> None:
    split = load_split(open_source(tiny_dataset), "train", 32, 1, tmp_path / "cache")
    d = split.data
    assert d.images.shape == (60, 32, 32, 1) and d.images.dtype == np.uint8
    assert d.class_counts() == {"NORMAL": 24, "PNEUMONIA": 36}
    assert all(n.startswith("train/NORMAL/") for n in d.names[d.labels == 0])
    assert not split.skipped and not split.from_cache


def test_rgb_channels(tiny_dataset: Path, tmp_path: Path) -> None:
    d = load_split(open_source(tiny_dataset), "val", 24, 3, tmp_path / "cache").data
    assert d.images.shape == (8, 24, 24, 3)


def test_unreadable_files_are_skipped_and_listed(tiny_dataset: Path, tmp_path: Path) -> None:
    bad = add_bad_files(tiny_dataset / "train" / "NORMAL")
    split = load_split(open_source(tiny_dataset), "train", 32, 1, tmp_path / "cache")
    assert len(split.data) == 60
    assert sorted(Path(n).name for n, _ in split.skipped) == sorted(bad)
    assert all(reason for _, reason in split.skipped)


def test_cache_hit_then_invalidation(tiny_dataset: Path, tmp_path: Path) -> None:
    source, cache = open_source(tiny_dataset), tmp_path / "cache"
    first = load_split(source, "train", 32, 1, cache)
    second = load_split(source, "train", 32, 1, cache)
    assert second.from_cache and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.data.images, first.data.images)
    assert list(second.data.names) == list(first.data.names)

    assert not load_split(source, "train", 40, 1, cache).from_cache  # other size: own entry

    victim = next((tiny_dataset / "train" / "NORMAL").glob("*.jpeg"))
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = load_split(source, "train", 32, 1, cache)
    assert not touched.from_cache and touched.fingerprint != first.fingerprint
    assert touched.data.digest() == first.data.digest()  # the same pixels: the same data

    victim.unlink()
    fewer = load_split(source, "train", 32, 1, cache).data
    assert len(fewer) == 59 and fewer.digest() != first.data.digest()


def test_corrupt_cache_file_is_rebuilt(tiny_dataset: Path, tmp_path: Path) -> None:
    source, cache = open_source(tiny_dataset), tmp_path / "cache"
    load_split(source, "val", 32, 1, cache)
    (cache_file,) = cache.glob("val-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = load_split(source, "val", 32, 1, cache)
    assert not again.from_cache and len(again.data) == 8


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset not found: .*nowhere.*DATA="):
        open_source(tmp_path / "nowhere")


def test_missing_class_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_dataset / "train" / "PNEUMONIA")
    with pytest.raises(DataError, match=r"train/PNEUMONIA is missing"):
        load_split(open_source(tiny_dataset), "train", 32, 1, tmp_path / "cache")


def test_empty_split(tiny_dataset: Path, tmp_path: Path) -> None:
    for f in (tiny_dataset / "train" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"train/NORMAL is empty"):
        load_split(open_source(tiny_dataset), "train", 32, 1, tmp_path / "cache")


def test_class_with_only_unreadable_files(tiny_dataset: Path, tmp_path: Path) -> None:
    for f in (tiny_dataset / "val" / "NORMAL").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError, match="no readable NORMAL image"):
        load_split(open_source(tiny_dataset), "val", 32, 1, tmp_path / "cache")


def test_wrong_layout_names_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "images" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no train/ folder \(it holds: NORMAL\)"):
        open_source(tmp_path / "images")


@pytest.mark.parametrize(("name", "patient"), [
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("scan.png", "scan"),
])
def test_patient_id(name: str, patient: str) -> None:
    assert patient_id(name) == patient


def test_validation_split_keeps_patients_apart_and_ratio() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), 3)
    labels = (rng.random(300) < 0.74).astype(int).repeat(3)
    train, val = validation_split(labels, groups, 0.1, seed=7)
    assert not set(groups[train]) & set(groups[val])
    assert len(train) + len(val) == len(labels)
    assert 0.07 < len(val) / len(labels) < 0.13
    assert abs(labels[val].mean() - labels.mean()) < 0.05
    _again_train, again_val = validation_split(labels, groups, 0.1, seed=7)
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(val, validation_split(labels, groups, 0.1, seed=8)[1])


def test_training_data_never_reads_test(workdir: Path, tiny_dataset: Path) -> None:
    data = load_training_data(DataConfig(root=str(tiny_dataset), image_size=32), seed=0)
    assert set(data.loads) == {"train", "val"}
    # official val (8 images) joins the patient-grouped cut of train
    assert len(data.train) + len(data.val) == 60 + 8
    assert not set(data.train.groups) & set(data.val.groups)
    assert all(not n.startswith("test/") for n in [*data.train.names, *data.val.names])
    assert not list((workdir / ".pneumo" / "cache").glob("test-*"))


def test_official_validation_mode(workdir: Path, tiny_dataset: Path) -> None:
    data = load_training_data(DataConfig(root=str(tiny_dataset), image_size=32,
                                         validation="official"), seed=0)
    assert (len(data.train), len(data.val)) == (60, 8)


def test_sample_is_used_without_data(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    dataset._say_sample.cache_clear()  # said once per process: earlier tests may have
    data = load_training_data(DataConfig(image_size=32), seed=0)
    load_training_data(DataConfig(image_size=32), seed=0)
    assert data.root.name == "sample"
    assert caplog.text.count("bundled sample") == 1 and "DATA=" in caplog.text
    assert min(data.train.class_counts().values()) > 0


def test_bundled_sample_is_small_and_complete() -> None:
    from pneumo_exp.config import SAMPLE_DIR
    files = [p for p in SAMPLE_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5_000_000
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            assert list((SAMPLE_DIR / split / cls).glob("*.png")), f"{split}/{cls} empty"
    assert "CC BY 4.0" in (SAMPLE_DIR / "README.md").read_text()


def test_build_sample_groups_patients(tmp_path: Path) -> None:
    from pneumo_exp.data.sample import build_sample
    src = make_folder_dataset(tmp_path / "full", {"train": (20, 30), "val": (4, 4),
                                                  "test": (6, 6)})
    written = build_sample(src, tmp_path / "sample", image_size=24,
                           counts={"train": (6, 8), "val": (2, 2), "test": (2, 2)})
    assert all(a >= 1 and b >= 1 for a, b in written.values())
    names = [p.name for p in (tmp_path / "sample" / "train").rglob("*.png")]
    # whole patients: every patient drawn brings both of its images
    ids = [patient_id(n) for n in names]
    assert all(ids.count(i) == 2 for i in ids)
