"""The site check's verdicts. On a tiny version of synthetic X-rays, registered with its
feature references: a change of prevalence alone, near-copies of a few patients, patients
told by DICOM PatientID or labels.csv, too few patients, and the MMD test permuting
patients. Then on real X-rays (slow): a version searched and promoted on the bundled sample,
checked on the sample's own test images, on copies of them made worse, and on another
hospital's adults (../shared/data/external/nih, when it is there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_base
from PIL import Image

from pneumo_exp.config import SAMPLE_DIR
from pneumo_exp.tracking.store import connect

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "nih"
SIZE = 32


# ---- a tiny version of synthetic X-rays ------------------------------------------------------

def _patient(rng: np.random.Generator, label: int, images: int, copies: bool = False
             ) -> list[np.ndarray]:
    """`images` X-rays of one patient: the patient's own anatomy (lung fields placed and
    sized their way, a PNEUMONIA patient's opacity where it is), each with its own noise;
    or, with `copies`, one X-ray and near-copies of it (a little noise of their own)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    left, right, width = rng.uniform(0.25, 0.35), rng.uniform(0.65, 0.75), rng.uniform(.02, .04)
    anatomy = 40 + 120 * (np.exp(-((xx - left) ** 2 + (yy - 0.5) ** 2) / width)
                          + np.exp(-((xx - right) ** 2 + (yy - 0.5) ** 2) / width))
    if label:
        cx, cy = rng.uniform(0.25, 0.75, 2)
        anatomy += 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
    if copies:
        anatomy = anatomy + rng.normal(0, 15, anatomy.shape)
    noise = 2 if copies else 15
    return [np.clip(anatomy + rng.normal(0, noise, anatomy.shape), 0, 255).astype(np.uint8)
            for _ in range(images)]


def _cohort(rng: np.random.Generator, normal: int, pneumonia: int, images: tuple[int, int],
            copies: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, patients) of `normal` + `pneumonia` patients, each with between
    images[0] and images[1] X-rays (near-copies of one, with `copies`)."""
    x, y, g = [], [], []
    for p, label in enumerate([0] * normal + [1] * pneumonia):
        found = _patient(rng, label, int(rng.integers(images[0], images[1] + 1)), copies)
        x += found
        y += [label] * len(found)
        g += [p] * len(found)
    return np.stack(x)[..., None], np.array(y), np.array(g)


def _network() -> Any:
    """A small batch-normalized network (statistics that settle within a few epochs)."""
    import keras

    model = tiny_base(SIZE, momentum=0.9)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """'tiny' v1 in a store of its own: a batch-normalized network trained on synthetic
    X-rays, its validation (74% PNEUMONIA, 1-3 images a patient) kept as promote keeps it:
    feature references as registered and adapted, validated counts at its threshold."""
    import keras
    import mlflow

    from pneumo_exp.evaluation.metrics import binary_metrics
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.registry.promote import score_summary
    from pneumo_exp.serving.contract import VersionContract, training_population
    from pneumo_exp.serving.features import validation_features

    root = tmp_path_factory.mktemp("tiny_version")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = _cohort(rng, 150, 150, (1, 2))
    model = _network()
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    vx, vy, vg = _cohort(rng, 26, 74, (1, 3))
    scores = model.predict(vx, verbose=0).ravel()
    threshold = float(np.quantile(scores[vy == 1], 0.1))  # a validation sensitivity of 0.9
    f = binary_metrics(vy, scores, threshold)
    assert f["sensitivity"] + f["specificity"] > 1.6, f
    features, adapted = validation_features([model], [vx], vy, vg, scores)
    contract = VersionContract(
        members=((SIZE, 1),), threshold=threshold,
        validated={"sensitivity": (int(f["tp"]), int(f["tp"] + f["fn"])),
                   "specificity": (int(f["tn"]), int(f["tn"] + f["fp"]))},
        reference=score_summary(scores, threshold), features=features,
        features_adapted=adapted, population=training_population())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from pneumo_exp.tracking.store import connect

        connect()
        with mlflow.start_run():
            write_version("tiny", contract, [model], {})
    return {"root": root, "rng": np.random.default_rng(1), "prevalence": float(np.mean(vy))}


def _write(folder: Path, images: np.ndarray, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names, strict=True):
        Image.fromarray(image[..., 0]).save(folder / name)
    return folder


def _site_check(version: dict[str, Any], folder: Path, capsys: pytest.CaptureFixture,
                monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    from pneumo_exp.cli import main

    monkeypatch.chdir(version["root"])
    capsys.readouterr()
    code = main(["site-check", "--model", "models:/tiny/1", "--data", str(folder),
                 "--out", str(version["root"] / "reports")])
    out, err = capsys.readouterr()
    return code, out, err


def _verdict(out: str) -> str:
    return out.split("Verdict: ", 1)[1].split(":", 1)[0]


def test_a_change_of_prevalence_alone_is_no_shift(
        tiny_version: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """New patients of the training distribution, NORMAL only (a screening clinic) and 90%
    NORMAL: the site's prevalence is estimated and validation drawn to it, so neither is a
    shift, let alone another population, as registered or adapted to; the console says which
    prevalence was estimated. (Compared with validation's 74% PNEUMONIA as it is, both are
    `shifted`.)"""
    rng = tiny_version["rng"]
    for normal, pneumonia, most in ((40, 0, 0.25), (36, 4, 0.35)):
        x, _, g = _cohort(rng, normal, pneumonia, (1, 2))
        folder = _write(tmp_path / f"clinic_{pneumonia}", x,
                        [f"IM-{p:04d}-{i:04d}.png" for i, p in enumerate(g)])
        code, out, _ = _site_check(tiny_version, folder, capsys, monkeypatch)
        assert code == 0
        assert _verdict(out) == "like the training site", out
        estimated = float(out.split("drawn to their estimated ", 1)[1].split("%")[0])
        assert estimated <= 100 * most, out
        client = connect()  # its evaluation run keeps the estimate too
        (run,) = client.search_runs(
            [client.get_experiment_by_name("pneumo-exp/evaluations").experiment_id],
            f"attributes.run_name = 'site-check-clinic_{pneumonia}'")
        assert 100 * run.data.metrics["site_estimated_prevalence"] == pytest.approx(
            estimated, abs=0.6)
        # adapted to these images, it is compared with validation adapted at their mix
        adapted = float(out.split("adapted to it: a classifier tells them from validation's "
                                  "at AUC ", 1)[1][:5])
        assert adapted < 0.75, out


def test_near_copies_of_a_few_patients_named_by_uid_are_grouped_by_patient_id(
        tiny_version: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten patients, five near-copies each, as DICOM files named by their UIDs: the hashed
    PatientID groups them, so the classifier cannot learn patients and the MMD test
    permutes patients: like the training site. Grouped by labels.csv alike for PNGs, where
    a note needs no row and an unreadable image's row is no error (it is skipped)."""
    from dicom_copies import write_dicom

    rng = tiny_version["rng"]
    x, _, g = _cohort(rng, 3, 7, (5, 5), copies=True)
    dicom = tmp_path / "pacs"
    for i, (image, p) in enumerate(zip(x, g, strict=True)):
        write_dicom(image[..., 0], dicom / f"1.2.826.0.1.3680043.{1000 + i}.dcm",
                    patient_id=f"MRN{p:05d}")
    pngs = _write(tmp_path / "site" / "scans", x, [f"{1000 + i}.png" for i in range(len(x))])
    (pngs / "broken.png").write_bytes(b"not a PNG")
    (pngs.parent / "notes.txt").write_text("scanned on the ward\n")
    (pngs.parent / "labels.csv").write_text("file,patient\n" + "".join(
        f"scans/{1000 + i}.png,MRN{p:05d}\n" for i, p in enumerate(g))
        + "scans/broken.png,MRN00000\n")
    for folder, skipped in ((dicom, ""), (pngs.parent, ", 3 skipped")):
        code, out, err = _site_check(tiny_version, folder, capsys, monkeypatch)
        assert code == 0 and _verdict(out) == "like the training site", out + err
        assert f"50 images read{skipped}" in out and "of 10 patients" in out
        assert "MRN" not in out


def test_site_patients_are_hashed_patient_ids_then_labels_csv_then_file_names(
        tmp_path: Path) -> None:
    from dicom_copies import write_dicom

    from pneumo_exp.adaptation.site_check import site_patients
    from pneumo_exp.data.dicom import patient_key
    from pneumo_exp.data.images import decode_many

    image = np.full((SIZE, SIZE), 90, np.uint8)
    write_dicom(image, tmp_path / "1.2.3.dcm", patient_id="MRN7")
    write_dicom(image, tmp_path / "1.2.4.dcm")  # no PatientID: the CSV says whose it is
    Image.fromarray(image).save(tmp_path / "person3_virus_9.png")
    files = sorted(tmp_path.iterdir())
    decoded = decode_many(files, [(SIZE, 1)])
    assert list(site_patients(files, decoded, tmp_path)) == [
        patient_key("MRN7"), "1.2.4", "person3"]
    (tmp_path / "labels.csv").write_text(
        "file,patient\n1.2.3.dcm,A\n1.2.4.dcm,B\nperson3_virus_9.png,C\n")
    assert list(site_patients(files, decoded, tmp_path)) == [
        patient_key("MRN7"), patient_key("B"), patient_key("C")]
    # a CSV with a class column beside files of no class folder (the check reads no label),
    # and a link to an image outside the folder: named as the folder names them
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.png"
    Image.fromarray(image).save(outside)
    (tmp_path / "linked.png").symlink_to(outside)
    (tmp_path / "labels.csv").write_text(
        "file,patient,class\n1.2.3.dcm,A,NORMAL\n1.2.4.dcm,B,PNEUMONIA\n"
        "person3_virus_9.png,C,NORMAL\nlinked.png,D,PNEUMONIA\n")
    files = sorted(f for f in tmp_path.iterdir() if f.suffix != ".csv")
    decoded = decode_many(files, [(SIZE, 1)])
    assert list(site_patients(files, decoded, tmp_path)) == [
        patient_key("MRN7"), patient_key("B"), patient_key("D"), patient_key("C")]


def test_one_patients_images_get_one_message_with_the_number_needed(
        tiny_version: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """40 images of one patient (`person1_*`) once ended in a scikit-learn traceback."""
    x, _, _ = _cohort(tiny_version["rng"], 0, 1, (40, 40))
    folder = _write(tmp_path / "one", x, [f"person1_virus_{i}.png" for i in range(40)])
    code, _, err = _site_check(tiny_version, folder, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "40 images of 1 patient are too few" in lines[0]
    from pneumo_exp.adaptation.site_check import MIN_SITE_PATIENTS

    assert f"at least {MIN_SITE_PATIENTS} patients" in lines[0]


def test_a_version_whose_reference_keeps_no_classes_is_checked_and_says_so(
        tiny_version: dict[str, Any], tmp_path: Path) -> None:
    """A reference saved before classes and patients were kept loads without them; the
    check compares at validation's own prevalence and the verdict says so."""
    from dataclasses import fields, replace

    from pneumo_exp.adaptation.site_check import assess_site
    from pneumo_exp.serving.features import FeatureReference
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_version["root"])
        model = classifier(load("models:/tiny/1"))
    old = tmp_path / "old.npz"
    kept = model.contract.features
    np.savez(old, **{f.name: getattr(kept, f.name) for f in fields(kept)
                     if f.name not in ("labels", "groups")})
    before = FeatureReference.load(old)
    assert not before.knows_classes and len(before.drawn_to(0.0)) == len(before.reference)
    model.contract = replace(model.contract, features=before, features_adapted=None)
    x, _, g = _cohort(tiny_version["rng"], 20, 20, (1, 1))
    check = assess_site(model, {(SIZE, 1): x}, g)
    assert not check.drawn and check.prevalence is not None
    assert "keeps no classes" in check.verdict and "promote it again" in check.verdict


def test_a_version_whose_threshold_told_nothing_apart_says_so(tiny_version: dict[str, Any]
                                                              ) -> None:
    """Validated counts at chance (sensitivity + specificity <= 1) estimate no prevalence:
    the verdict says why, and does not call a new version older."""
    from dataclasses import replace

    from pneumo_exp.adaptation.site_check import assess_site
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_version["root"])
        model = classifier(load("models:/tiny/1"))
    model.contract = replace(model.contract, validated={"sensitivity": (20, 20),
                                                        "specificity": (0, 20)})
    x, _, g = _cohort(tiny_version["rng"], 20, 20, (1, 1))
    check = assess_site(model, {(SIZE, 1): x}, g)
    assert check.prevalence is None and not check.drawn
    assert "sensitivity 1.00, specificity 0.00" in check.verdict
    assert "no better than chance" in check.verdict and "older" not in check.verdict


def test_the_mmd_test_permutes_patients() -> None:
    """Two samples of one population of patients, each patient's images alike: permuting
    images finds a shift most of the time, permuting patients at about its 5%."""
    from pneumo_exp.evaluation.two_sample import mmd_test

    rng = np.random.default_rng(0)

    def patients(n: int, each: int) -> tuple[np.ndarray, np.ndarray]:
        centers = rng.normal(0, 1, (n, 6))
        return (np.repeat(centers, each, axis=0) + rng.normal(0, 0.1, (n * each, 6)),
                np.repeat(np.arange(n), each))

    by_image, by_patient = [], []
    for seed in range(40):
        (ref, ref_groups), (site, site_groups) = patients(60, 2), patients(8, 5)
        by_image.append(mmd_test(ref, site, resamples=99, seed=seed).p_value < 0.05)
        by_patient.append(mmd_test(ref, site, resamples=99, seed=seed,
                                   reference_groups=ref_groups,
                                   site_groups=site_groups).p_value < 0.05)
    assert np.mean(by_image) > 0.5 and np.mean(by_patient) <= 0.15, (
        np.mean(by_image), np.mean(by_patient))


def test_black_box_shift_estimation() -> None:
    from pneumo_exp.adaptation.site_check import estimated_prevalence
    from pneumo_exp.evaluation.report import Proportion, Validated

    validated = Validated(Proportion(90, 100), Proportion(80, 100))  # fpr 0.2
    assert estimated_prevalence(0.2, validated) == pytest.approx(0.0)
    assert estimated_prevalence(0.55, validated) == pytest.approx(0.5)
    assert estimated_prevalence(0.95, validated) == 1.0  # clipped
    assert estimated_prevalence(0.5, Validated(Proportion(5, 10), Proportion(5, 10))) is None
    assert estimated_prevalence(0.5, Validated()) is None


# ---- a version of the bundled sample (real X-rays) -----------------------------------------

@pytest.fixture(scope="module")
def sample_version(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pneumo_exp.cli import main

    root = tmp_path_factory.mktemp("sample_version")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["search", "aug_cnn", "--data", str(SAMPLE_DIR)]) == 0
        assert main(["promote", "aug_cnn"]) == 0
    return {"root": root}


def _sample_verdict(root: Path, folder: Path, capsys: pytest.CaptureFixture,
                    monkeypatch: pytest.MonkeyPatch) -> str:
    from pneumo_exp.cli import main

    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["site-check", "--data", str(folder), "--out", str(root / "reports")]) == 0
    return _verdict(capsys.readouterr().out)


@pytest.mark.slow  # a search and a promotion of the sample (about 3 minutes)
def test_the_training_hospitals_own_images_are_not_another_population(
        sample_version: dict[str, Any], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """All of the sample's test images, and its NORMAL ones alone (a prevalence of 0)."""
    for folder in (SAMPLE_DIR / "test", SAMPLE_DIR / "test" / "NORMAL"):
        verdict = _sample_verdict(sample_version["root"], folder, capsys, monkeypatch)
        assert verdict in ("like the training site", "shifted"), folder


@pytest.mark.slow
def test_copies_made_worse_are_at_least_shifted(sample_version: dict[str, Any],
                                                capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for kind in ("inverted", "noisy"):
        folder = tmp_path / kind
        folder.mkdir()
        for f in sorted((SAMPLE_DIR / "test").rglob("*.png"))[::2]:
            a = np.asarray(Image.open(f).convert("L"), dtype=np.float64)
            a = 255 - a if kind == "inverted" else a + rng.normal(0, 25, a.shape)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(folder / f.name)
        verdict = _sample_verdict(sample_version["root"], folder, capsys, monkeypatch)
        assert verdict in ("shifted", "another population"), kind


@pytest.mark.slow
@pytest.mark.skipif(not NIH.is_dir(), reason=f"{NIH} is absent: another hospital's images "
                    "are not shipped with the project")
def test_another_hospitals_adults_are_another_population(sample_version: dict[str, Any],
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    for folder in (NIH, NIH / "NORMAL"):
        verdict = _sample_verdict(sample_version["root"], folder, capsys, monkeypatch)
        assert verdict == "another population", folder
