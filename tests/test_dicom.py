"""DICOM wherever an image is read: the same X-ray as a PNG and as DICOM (every encoding a
PACS uses) gives the same model input; pydicom's own test files decode or are skipped with
a reason; patients group by their (hashed) PatientID."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from dicom_copies import DCMTK, VARIANTS, write_dicom
from PIL import Image

from pneumo_exp.data.images import UnreadableImageError, decode_image, decode_many, read_image
from pneumo_exp.data.sources import fingerprint

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
PNGS = sorted((SAMPLE / "test" / "NORMAL").iterdir())[:2] + sorted(
    (SAMPLE / "test" / "PNEUMONIA").iterdir())[:2]


def _variants() -> list[str]:
    return [v for v in VARIANTS if v not in DCMTK or shutil.which(DCMTK[v][0])]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_a_dicom_copy_gives_the_png_s_input(tmp_path: Path, variant: str,
                                            channels: int) -> None:
    if variant not in _variants():
        pytest.skip("JPEG Lossless and JPEG-LS copies need DCMTK (Debian package dcmtk)")
    for png in PNGS:
        pixels = np.asarray(Image.open(png).convert("L"))
        dcm = write_dicom(pixels, tmp_path / f"{png.stem}-{variant}.dcm", variant)
        for size in (32, 64, 100):
            want = decode_image(png, size, channels).astype(int)
            got = decode_image(dcm, size, channels).astype(int)
            assert np.abs(got - want).max() <= 1, (png.name, variant, size)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_same_pixels_give_the_same_input_and_probability_in_every_container(
        tmp_path: Path, mode: str) -> None:
    """A JPEG (larger than the model's input, grayscale or RGB as the Kaggle files are), a PNG
    of its decoded pixels and a DICOM object of them: one decoding, so one probability. (With
    libjpeg's reduced-scale decoding of the JPEG, the three differed.)"""
    import keras

    big = Image.open(PNGS[2]).convert("L").resize((300, 260), Image.Resampling.BICUBIC)
    jpeg = tmp_path / "scan.jpeg"
    big.convert(mode).save(jpeg, quality=85)
    with Image.open(jpeg) as im:
        gray = np.asarray(im.convert("L"))
    png = tmp_path / "scan.png"
    Image.fromarray(gray).save(png)
    containers = [jpeg, png, write_dicom(gray, tmp_path / "scan.dcm", "mono2")]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    for size in (32, 64, 100):
        arrays = [decode_image(f, size, 1) for f in containers]
        assert all((a == arrays[0]).all() for a in arrays), size
    prob = [float(model.predict(decode_image(f, 64, 1)[None].astype(np.float32), verbose=0)[0, 0])
            for f in containers]
    assert max(prob) - min(prob) < 1e-3, prob


def test_a_file_is_dicom_by_its_content_not_its_name(tmp_path: Path) -> None:
    pixels = np.asarray(Image.open(PNGS[0]).convert("L"))
    for name in ("scan.png", "IM0001", "scan.jpeg"):
        path = write_dicom(pixels, tmp_path / name, "mono1", patient_id="PX-1")
        assert (decode_image(path, 32, 1) == decode_image(PNGS[0], 32, 1)).all()
    with open(tmp_path / "IM0001", "rb") as f:
        decoded = decode_many([f, PNGS[0]], [(32, 1), (16, 3)])
    assert decoded.readable == [0, 1]
    assert (decoded.arrays[(32, 1)][0] == decoded.arrays[(32, 1)][1]).all()


def test_decoding_leaves_the_warning_filters_as_it_found_them(tmp_path: Path) -> None:
    """Warnings are off while a batch decodes, on a pool of threads; the process's filters
    (a shared list that catch_warnings swaps) are the caller's afterwards, also when two
    batches decode at once, as two requests to a served model do."""
    from concurrent.futures import ThreadPoolExecutor

    pixels = np.asarray(Image.open(PNGS[0]).convert("L"))
    files = [write_dicom(pixels, tmp_path / f"{i}.dcm", "mono1") for i in range(12)]
    before = list(warnings.filters)
    with ThreadPoolExecutor(2) as pool:
        for decoded in pool.map(lambda _: decode_many(files, [(16, 1)]), range(6)):
            assert decoded.readable == list(range(12))
    assert warnings.filters == before
    with pytest.warns(UserWarning, match="still shown"):
        warnings.warn("still shown", UserWarning, stacklevel=1)


def test_multi_frame_gives_its_first_frame(tmp_path: Path) -> None:
    from pydicom import dcmread

    first = np.asarray(Image.open(PNGS[0]).convert("L"))
    second = np.asarray(Image.open(PNGS[1]).convert("L").resize(first.shape[::-1]))
    path = write_dicom(first, tmp_path / "frames.dcm")
    ds = dcmread(path)
    ds.set_pixel_data(np.stack([first, second]), "MONOCHROME2", 8)
    ds.save_as(path, enforce_file_format=True)
    assert (decode_image(path, 32, 1) == decode_image(PNGS[0], 32, 1)).all()


def test_pydicom_s_test_files_decode_or_are_skipped_with_a_reason() -> None:
    import pydicom.data

    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*")
                   if p.is_file())
    from pneumo_exp.data.images import RefusedImageError

    decoded, refused, reasons = 0, 0, []
    for f in files:
        try:
            image, _ = read_image(f, 32, 1)
        except RefusedImageError as e:  # CT, MR, ...: decodable, but not a chest radiograph
            refused += 1
            reasons.append(str(e))
            continue
        except UnreadableImageError as e:
            reasons.append(str(e))
            continue
        assert image.shape == (32, 32, 1) and image.dtype == np.uint8
        decoded += 1
    assert len(files) > 100 and decoded + refused > 50 and refused > 40
    assert all(r and "\n" not in r for r in reasons)
    assert any("without pixel data" in r for r in reasons)  # structured reports and stubs
    assert any("not a chest radiograph: a CT image" in r for r in reasons)


def test_a_syntax_without_a_decoder_is_named(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    path = write_dicom(np.zeros((8, 8), np.uint8), tmp_path / "jxl.dcm")
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # video: no pixel decoder exists
    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 20])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableImageError, match=r"no decoder exists for .* MPEG2"):
        decode_image(path, 32, 1)


# pydicom's plugins made unavailable, as if not installed: pylibjpeg-libjpeg is found
# through its entry points, so they are hidden; the others are not importable
HIDE = ("import importlib.metadata as md, sys\n"
        "found = md.entry_points\n"
        "md.entry_points = lambda **kw: md.EntryPoints(\n"
        "    e for e in found(**kw) if not e.value.startswith('libjpeg'))\n"
        "for name in {modules!r}:\n"
        "    sys.modules[name] = None\n")


def _decode_without(modules: tuple[str, ...], paths: list[Path]) -> list[str]:
    """Each file's decoded 32 px array (as bytes in hex), or its message, where libjpeg and
    `modules` are not installed."""
    code = HIDE.format(modules=modules) + (
        "from pneumo_exp.data.images import UnreadableImageError, decode_image\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    try:\n        print(decode_image(path, 32, 1).tobytes().hex())\n"
        "    except UnreadableImageError as e:\n        print(e)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True).stdout.splitlines()


@pytest.mark.skipif(not all(shutil.which(c[0]) for c in DCMTK.values()),
                    reason="needs dcmcjpeg and dcmcjpls (package dcmtk)")
def test_gdcm_decodes_jpeg_lossless_and_jpeg_ls_without_the_gpl_plugin(tmp_path: Path) -> None:
    """pylibjpeg-libjpeg (GPLv3) is an optional extra: without it, GDCM decodes JPEG
    Lossless and JPEG-LS to the same input as the PNG; without GDCM too, the message names
    the syntax and what to install, not a traceback."""
    pixels = np.asarray(Image.open(PNGS[0]).convert("L"))
    paths = [write_dicom(pixels, tmp_path / f"{v}.dcm", v) for v in DCMTK]
    want = decode_image(PNGS[0], 32, 1).tobytes().hex()
    assert _decode_without((), paths) == [want, want]
    for out in _decode_without(("gdcm",), paths):
        assert "not installed" in out and "gdcm" in out and "pylibjpeg" in out, out
    assert "JPEG Lossless" in _decode_without(("gdcm",), paths[:1])[0]


def test_no_gpl_in_the_required_dependencies() -> None:
    """An MIT project whose every required dependency, and theirs, is under a licence that
    lets a hospital ship it (the GPL libjpeg is the extra `libjpeg`)."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    with (root / "pyproject.toml").open("rb") as f:
        todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    licences: dict[str, str] = {}
    while todo:
        req = todo.pop()
        if req.name.lower() in licences:
            continue
        meta = md.distribution(req.name).metadata
        licences[req.name.lower()] = " ".join(
            [meta.get("License-Expression") or "", (meta.get("License") or "")[:80]]
            + [c for c in meta.get_all("Classifier") or [] if c.startswith("License")])
        for text in md.distribution(req.name).requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in req.extras or {""}):
                todo.append(dep)
    assert "pydicom" in licences and "python-gdcm" in licences and len(licences) > 50
    gpl = {name: text for name, text in licences.items()
           if "GPL" in text.replace("LGPL", "") and "Lesser" not in text}
    assert not gpl, gpl


def test_presentation_lut_shape_inverse_is_applied_once(tmp_path: Path) -> None:
    """INVERSE inverts as MONOCHROME1 does; with MONOCHROME1 (where the standard asks for
    it) the two state one inversion, so the image is not turned back."""
    from pydicom import dcmread

    pixels = np.asarray(Image.open(PNGS[0]).convert("L"))
    want = decode_image(PNGS[0], 32, 1)
    for variant, expected in (("mono2", 255 - want), ("mono1", want)):
        path = write_dicom(pixels, tmp_path / f"{variant}.dcm", variant)
        ds = dcmread(path)
        ds.PresentationLUTShape = "INVERSE"
        ds.save_as(path, enforce_file_format=True)
        assert np.abs(decode_image(path, 32, 1).astype(int) - expected).max() <= 1, variant


def test_the_cache_key_follows_the_installed_decoders() -> None:
    entries = [("train/NORMAL/a.dcm", 100, 1)]
    one = fingerprint(entries, {"size": 32, "channels": 1, "decoders": "pydicom 3"})
    two = fingerprint(entries, {"size": 32, "channels": 1,
                                "decoders": "pydicom 3; JPEGLosslessSV1:pylibjpeg"})
    assert one != two


def test_patients_group_by_hashed_patient_id(workdir: Path) -> None:
    """File names that say nothing of the patient: the PatientIDs group the images, and only
    their salted hashes are kept."""
    from pneumo_exp.config import DataConfig
    from pneumo_exp.data.dataset import load_training_data

    root = workdir / "d"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("val", 2)):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40, 40), dtype=np.uint8)
                write_dicom(pixels, root / split / cls / f"img{i:03d}.dcm",
                            patient_id=f"PX-{label}{i // 3:03d}{split}",
                            patient_name="DOE^JANE")
    data = load_training_data(DataConfig(root=str(root), image_size=32), seed=0)
    assert not set(data.train.groups) & set(data.val.groups)
    every = np.concatenate([data.train.groups, data.val.groups])
    assert len(set(every)) == 2 * 8 + 2  # 3 images a patient in train, 2 patients in val
    assert all(g.startswith("patient-") and "PX-" not in g for g in every)
    cached = b"".join(p.read_bytes() for p in (workdir / ".pneumo" / "cache").glob("*.npz"))
    assert b"PX-" not in cached and b"DOE" not in cached


@pytest.mark.parametrize(("modality", "part", "refused"), [
    ("CT", "", "Modality CT"), ("MR", "CHEST", "Modality MR"), ("DX", "HEAD", "HEAD"),
    ("CR", "SKULL", "SKULL"), ("DX", "CHEST", None), ("CR", "PORTABLE CHEST", None),
    ("", "", None)])
def test_a_dicom_that_is_not_a_chest_radiograph_is_refused(tmp_path: Path, modality: str,
                                                           part: str, refused: str | None) -> None:
    from pydicom import dcmread

    from pneumo_exp.data.images import REFUSED, RefusedImageError

    path = write_dicom(np.asarray(Image.open(PNGS[0]).convert("L")), tmp_path / "x.dcm")
    ds = dcmread(path)
    ds.Modality = modality
    if part:
        ds.BodyPartExamined = part
    ds.save_as(path, enforce_file_format=True)
    if refused is None:
        assert decode_image(path, 32, 1).shape == (32, 32, 1)
        return
    with pytest.raises(RefusedImageError, match=refused):
        decode_image(path, 32, 1)
    decoded = decode_many([path, PNGS[0]], [(32, 1)])
    assert decoded.readable == [1] and decoded.labels == {0: REFUSED}


def test_a_teams_salt_gives_every_installation_the_same_keys(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Without PNEUMO_EXP_PATIENT_SALT each installation draws its own salt (kept 0600), so
    its keys are its own; with it, a team's installations group a patient alike."""
    import stat

    from pneumo_exp.data.dicom import SALT_ENV, patient_key

    def keys(salt: str | None) -> list[str]:
        if salt is None:
            monkeypatch.delenv(SALT_ENV, raising=False)
        else:
            monkeypatch.setenv(SALT_ENV, salt)
        found = []
        for place in ("north", "south"):
            (tmp_path / str(salt) / place).mkdir(parents=True)
            monkeypatch.chdir(tmp_path / str(salt) / place)
            found.append(patient_key("PX-00042"))
            assert found[-1] == patient_key("PX-00042") != patient_key("PX-00043")
        return found

    north, south = keys(None)
    assert north != south
    kept = tmp_path / "None" / "south" / ".pneumo" / "patient_salt"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    team, also = keys("a team's shared secret")
    assert team == also and team not in (north, south)
    assert not (tmp_path / "a team's shared secret" / "north" / ".pneumo").exists()
