"""Site adaptation: batch-normalization statistics re-estimated on a site's unlabeled images,
registered as a new version (pneumo-exp adapt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
from conftest import checked_contract, make_folder_dataset

from pneumo_exp.config import RegistryConfig
from pneumo_exp.registry.promote import promote
from pneumo_exp.serving.batch_norm import (
    MIN_ADAPTATION_IMAGES,
    NothingToAdaptError,
    adapt_batch_norm,
    batch_norm_layers,
)


def _square_images(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Noise; class 1 has a bright 8x8 square somewhere."""
    labels = rng.integers(0, 2, n)
    images = rng.normal(70, 20, (n, size, size, 1))
    for img, label in zip(images, labels, strict=True):
        if label:
            y, x = rng.integers(0, size - 8, 2)
            img[y:y + 8, x:x + 8] += 120
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _tiny_bn_model() -> keras.Model:
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, np.random.Generator]:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = _square_images(rng, 600)
    model = _tiny_bn_model()
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    return model, rng


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((model.predict(x.astype(np.float32), verbose=0).ravel() >= 0.5) == y))


def test_adaptation_recovers_what_a_site_shift_takes(trained: Any) -> None:
    """A site whose scanner quarters the contrast and brightens: the model trained elsewhere
    loses accuracy there; adapted on the site's unlabeled images, it gets it back."""
    model, rng = trained
    x, y = _square_images(rng, 300)
    assert _accuracy(model, x, y) > 0.9
    shifted = np.clip(x.astype(float) * 0.25 + 150, 0, 255).astype(np.uint8)
    before = _accuracy(model, shifted, y)
    site = keras.models.clone_model(model)
    site.set_weights(model.get_weights())
    assert adapt_batch_norm(site, shifted[:200]) == 2
    after = _accuracy(site, shifted[200:], y[200:])
    assert before < 0.75 and after > 0.9, (before, after)


def test_adaptation_changes_the_statistics_and_nothing_else(trained: Any) -> None:
    model, rng = trained
    site = keras.models.clone_model(model)
    site.set_weights(model.get_weights())
    x, _ = _square_images(rng, 64)
    adapt_batch_norm(site, x // 2, batch_size=64, passes=1)  # one batch: the whole site
    statistics = {v.path for layer in batch_norm_layers(site)
                  for v in (layer.moving_mean, layer.moving_variance)}
    changed = {b.path for a, b in zip(model.weights, site.weights, strict=True)
               if not np.array_equal(a.numpy(), b.numpy())}
    assert changed == statistics
    # the first layer's statistics are those of its input in training mode (this network
    # has no augmentation, and nothing normalizes before the first layer)
    first = batch_norm_layers(site)[0]
    features = keras.Model(site.inputs, first.input).predict(x // 2, verbose=0)
    np.testing.assert_allclose(first.moving_mean.numpy(), features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(), features.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-6)


def test_the_site_statistics_are_estimated_as_training_estimated_them(trained: Any) -> None:
    """Later layers see their input normalized by the batch, as in training, whatever was
    stored before; the same images give the same statistics (seeded); a batch's variance,
    not the site's total, is what is stored."""
    model, rng = trained
    x, _ = _square_images(rng, 96)
    copies = []
    for start in (model.get_weights(), [w * 0 + 1 if "moving" in v.path else w.numpy()
                                         for v, w in zip(model.weights, model.weights,
                                                         strict=True)]):
        site = keras.models.clone_model(model)
        site.set_weights(start)  # stored statistics as trained, or all ones
        adapt_batch_norm(site, x)
        copies.append([layer.moving_mean.numpy() for layer in batch_norm_layers(site)])
    for a, b in zip(*copies, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    second = batch_norm_layers(site)[1]
    total = keras.Model(site.inputs, second.input)([x.astype(np.float32)], training=True)
    assert np.all(second.moving_variance.numpy()
                  <= keras.ops.convert_to_numpy(total).var(axis=(0, 1, 2)) * 1.05)


def test_nothing_to_adapt_and_too_few_images() -> None:
    inputs = keras.Input((8, 8, 1))
    plain = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    with pytest.raises(NothingToAdaptError):
        adapt_batch_norm(plain, np.zeros((40, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=f"at least {MIN_ADAPTATION_IMAGES}"):
        adapt_batch_norm(_tiny_bn_model(), np.zeros((5, 32, 32, 1), np.uint8))


def test_a_model_with_one_batch_norm_layer_is_adapted() -> None:
    """One layer's probe returns one tensor, not a list of them."""
    inputs = keras.Input((8, 8, 1))
    norm = keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(norm(inputs))))
    images = np.random.default_rng(0).integers(100, 200, (64, 8, 8, 1), dtype=np.uint8)
    assert adapt_batch_norm(model, images) == 1
    assert float(norm.moving_mean.numpy()[0]) == pytest.approx(images.mean(), rel=0.02)


# ---- pneumo-exp adapt, on the session's search ---------------------------------------------

def _register_plain_model(searched: dict[str, Any]) -> None:
    """'plain' v1: a packaged model without batch normalization."""
    from pneumo_exp.registry.packaging import write_version

    inputs = keras.Input((48, 48, 1))
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    with mlflow.start_run(experiment_id=searched["result"].experiment_id):
        write_version("plain", checked_contract([model], 48), [model], {})


@pytest.fixture
def sites(searched: dict[str, Any]) -> dict[str, Any]:
    """'sites' v1: the session's first trial (batch-normalized); 'plain' v1: a model
    without batch normalization."""
    if "sites" not in searched:
        client, result = searched["client"], searched["result"]
        trials = client.search_runs([result.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
        (first,) = [r for r in trials if r.data.tags["pneumo.trial_id"] == "0"]
        assert first.data.params["batch_norm"] == "True"
        promote(RegistryConfig(model_name="sites"), run_id=first.info.run_id)
        _register_plain_model(searched)
        folder = make_folder_dataset(searched["root"] / "site_images",
                                     {"scans": (20, 20)}, size=60, seed=7)
        (folder / "scans" / "notes.txt").write_text("not an image")
        searched["sites"] = {"folder": folder}
    return searched["sites"]


def _versions(client: Any, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def test_adapt_registers_a_site_version(sites: dict[str, Any], searched: dict[str, Any],
                                        capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main
    from pneumo_exp.data.images import files_fingerprint
    from pneumo_exp.serving.model import classifier, images_frame

    client = searched["client"]
    assert main(["adapt", "--model", "models:/sites@champion", "--data",
                 str(sites["folder"]), "--site", "north"]) == 0
    out = capsys.readouterr().out
    assert "version 2" in out
    assert "Use it: pneumo-exp predict --model models:/sites@site-north scan.jpeg" in out
    v2 = client.get_model_version("sites", "2")
    images = sorted(p for p in sites["folder"].rglob("*.jpeg"))
    assert v2.tags["pneumo.site"] == "north" and v2.tags["pneumo.adapted_from_version"] == "1"
    assert v2.tags["pneumo.adaptation_images"] == "40"
    assert v2.tags["pneumo.adaptation_fingerprint"] == files_fingerprint(sites["folder"], images)
    v1 = client.get_model_version("sites", "1")
    for key in ("pneumo.threshold", "pneumo.temperature", "pneumo.source_run_ids"):
        assert v2.tags[key] == v1.tags[key]  # the source's threshold rule and lineage
    model = client.get_registered_model("sites")
    assert {k: str(v) for k, v in model.aliases.items()} == {
        "champion": "1", "challenger": "1", "site-north": "2"}
    assert "adapted to site `north`" in v2.description
    # the same weights but the statistics; the site's images get other probabilities
    source = classifier(mlflow.pyfunc.load_model("models:/sites/1")).members[0].model
    adapted = classifier(mlflow.pyfunc.load_model("models:/sites@site-north")).members[0].model
    differ = {b.path for a, b in zip(source.weights, adapted.weights, strict=True)
              if not np.array_equal(a.numpy(), b.numpy())}
    assert differ and all(p.endswith(("moving_mean", "moving_variance")) for p in differ)
    frame = images_frame(images[:4])
    p1 = mlflow.pyfunc.load_model("models:/sites/1").predict(frame)["probability"]
    p2 = mlflow.pyfunc.load_model("models:/sites/2").predict(frame)["probability"]
    assert not np.allclose(p1.to_numpy(float), p2.to_numpy(float))


@pytest.mark.parametrize(("case", "needle"), [
    ("no_batch_norm", "has nothing to adapt"),
    ("too_few", f"adapting needs at least {MIN_ADAPTATION_IMAGES} images"),
    ("empty", "has no files"),
    ("unknown_model", "no registered model version models:/nowhere@champion"),
])
def test_adapt_bad_input_registers_nothing(sites: dict[str, Any], searched: dict[str, Any],
                                           tmp_path: Path, case: str, needle: str,
                                           capsys: pytest.CaptureFixture) -> None:
    from pneumo_exp.cli import main

    client = searched["client"]
    folder, model = sites["folder"], "models:/sites/1"
    if case == "no_batch_norm":
        model = "models:/plain/1"
    elif case == "too_few":
        folder = make_folder_dataset(tmp_path / "few", {"x": (5, 5)})
    elif case == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "unknown_model":
        model = "models:/nowhere@champion"
    before = {n: _versions(client, n) for n in ("sites", "plain")}
    assert main(["adapt", "--model", model, "--data", str(folder), "--site", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert {n: _versions(client, n) for n in ("sites", "plain")} == before


# ---- what the network sees: feature references, two-sample tests, the site check ----------

def test_the_feature_reference_flags_images_unlike_validations(tmp_path: Path) -> None:
    """Held-out validation stays within the flag but for about 1%; images from elsewhere in
    feature space lie beyond it; the reference reads back whole from its artifact."""
    from pneumo_exp.serving.features import COMPONENTS, FeatureReference

    rng = np.random.default_rng(0)
    mixing = rng.normal(0, 1, (48, 48))
    features = rng.normal(0, 1, (600, 48)) @ mixing
    labels, groups = rng.integers(0, 2, 600), np.arange(600) // 2  # two images a patient
    ref = FeatureReference.fit(features, labels, groups, rng.uniform(0, 1, 600))
    assert ref.reference.shape == (400, COMPONENTS) and ref.held_out.shape == (200, COMPONENTS)
    same = rng.normal(0, 1, (2000, 48)) @ mixing
    assert 0.002 < np.mean(ref.distance(same) > ref.limit) < 0.04
    elsewhere = features[:100] + 8 * features.std(axis=0)
    assert np.mean(ref.distance(elsewhere) > ref.limit) > 0.9
    path = tmp_path / "reference.npz"
    path.write_bytes(ref.to_bytes())
    back = FeatureReference.load(path)
    assert np.allclose(back.distance(elsewhere), ref.distance(elsewhere))


def test_two_sample_tests_tell_a_shift_from_none() -> None:
    from pneumo_exp.evaluation.two_sample import classifier_auc, mmd_test

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (300, 8))
    alike, shifted = rng.normal(0, 1, (120, 8)), rng.normal(0.8, 1, (120, 8))
    assert abs(classifier_auc(reference, alike) - 0.5) < 0.1
    assert classifier_auc(reference, shifted) > 0.85
    assert mmd_test(reference, alike).p_value > 0.05
    assert mmd_test(reference, shifted).p_value < 0.01
    # the site's images of one patient stay in one fold: identical pairs teach nothing
    pairs = np.repeat(alike[:60], 2, axis=0)
    assert classifier_auc(reference, pairs, np.repeat(np.arange(60), 2)) < 0.7


def test_the_site_check_verdict_starts_with_its_phrase() -> None:
    """Scripts read the phrase after `Verdict: `, decided as registered: another population
    from ANOTHER_POPULATION_AUC, whatever adaptation does; shifted from SHIFTED_AUC, or when
    the MMD test finds a smaller shift."""
    from pneumo_exp.adaptation.site_check import (
        ANOTHER,
        ANOTHER_POPULATION_AUC,
        LIKE,
        SHIFT_P_VALUE,
        SHIFTED,
        SHIFTED_AUC,
        VERDICTS,
        Look,
        SiteCheck,
    )
    from pneumo_exp.evaluation.two_sample import MMD

    def look(auc: float, p: float) -> Look:
        return Look(np.zeros(40), 1.0, auc, MMD(0.1, p), np.zeros((40, 2)), np.zeros((9, 2)))

    def kind(auc: float, p: float, adapted: float | None) -> str:
        check = SiteCheck(40, 0, np.full(40, 0.7), 0.5, {"positive_share": 0.7},
                          np.linspace(0, 1, 50), look(auc, p),
                          None if adapted is None else look(adapted, 0.5))
        assert check.verdict.startswith(check.kind + ": ")
        return check.kind

    assert kind(ANOTHER_POPULATION_AUC, 0.005, 0.99) == ANOTHER
    assert kind(ANOTHER_POPULATION_AUC, 0.005, None) == ANOTHER  # nothing to adapt
    assert kind(ANOTHER_POPULATION_AUC, 0.005, 0.6) == ANOTHER  # adaptation does not decide
    assert kind(ANOTHER_POPULATION_AUC - 0.01, 0.5, 0.99) == SHIFTED
    assert kind(SHIFTED_AUC, 0.5, None) == SHIFTED
    assert kind(SHIFTED_AUC - 0.01, SHIFT_P_VALUE / 2, None) == SHIFTED
    assert kind(SHIFTED_AUC - 0.01, 0.5, 0.99) == LIKE
    assert set(VERDICTS) == {LIKE, SHIFTED, ANOTHER}


def test_site_check_before_labels(sites: dict[str, Any], searched: dict[str, Any],
                                  tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Each check prints the site's figures as registered and adapted, and its verdict, and
    is logged as an evaluation run with its page; nothing is registered; images nothing
    like the training ones are another population."""
    from PIL import Image

    from pneumo_exp.cli import main

    client = searched["client"]
    before = _versions(client, "sites")
    assert main(["site-check", "--model", "models:/sites/1", "--data", str(sites["folder"]),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "40 images read" in out and "Verdict: " in out
    assert "as registered: a classifier tells them from validation's at AUC" in out
    # and adapted, against validation as the adapted network sees it (shown, never deciding)
    assert "adapted to it: a classifier tells them from validation's at AUC" in out
    pages = list(tmp_path.glob("*site-check.html"))
    assert len(pages) == 1 and "Site check" in pages[0].read_text()
    other = tmp_path / "other_scanner"
    other.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):  # bright, flat, noisy: nothing like the session's X-rays
        Image.fromarray(rng.integers(200, 256, (60, 60), dtype=np.uint8)).save(
            other / f"{i}.png")
    assert main(["site-check", "--model", "models:/sites/1", "--data", str(other),
                 "--site", "elsewhere", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Verdict: another population" in out and "on " + str(other) in out
    runs = client.search_runs([client.get_experiment_by_name(
        "pneumo-exp/evaluations").experiment_id], "attributes.run_name = 'site-check-elsewhere'")
    assert runs and runs[0].data.metrics["site_auc"] > 0.85
    assert runs[0].data.params["verdict"] == "another population"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")} == {
        "report/site_check.html", "report/site_check.png"}
    assert _versions(client, "sites") == before


def test_a_site_check_of_too_few_images_is_one_message(workdir: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Fewer images than adaptation reads cannot tell a population from a few patients: the
    check says how many it needs, in one line, and logs no evaluation run."""
    from conftest import tiny_base

    from pneumo_exp.adaptation.site_check import MIN_SITE_IMAGES
    from pneumo_exp.cli import main
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.tracking.store import connect

    client = connect()
    model = tiny_base(32)
    with mlflow.start_run():
        write_version("few", checked_contract([model], 32), [model], {})
    few = make_folder_dataset(workdir / "few", {"scans": (5, 5)})
    capsys.readouterr()
    assert main(["site-check", "--model", "models:/few/1", "--data", str(few), "--out",
                 str(workdir / "reports")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"10 readable images are too few for a site check: it needs at " \
        f"least {MIN_SITE_IMAGES}" in err[0], err
    evaluations = client.get_experiment_by_name("pneumo-exp/evaluations")
    assert evaluations is None or not client.search_runs([evaluations.experiment_id])


def test_a_version_with_no_adapted_reference_is_not_adapted(workdir: Path,
                                                           capsys: pytest.CaptureFixture
                                                           ) -> None:
    """A version whose validation was too small to adapt to keeps validation's features only
    as registered. An adapted network compared with them puts every image far away (the
    training data's own images `another population`), so adapt refuses it in one message
    and registers nothing."""
    from conftest import make_site_folder, tiny_base

    from pneumo_exp.cli import main
    from pneumo_exp.registry.packaging import write_version
    from pneumo_exp.tracking.store import connect

    client = connect()
    model = tiny_base(32)
    small = np.random.default_rng(1).integers(0, 255, (24, 32, 32, 1)).astype("float32")
    contract = checked_contract([model], 32, small)
    assert contract.features is not None and contract.features_adapted is None
    with mlflow.start_run():
        write_version("small", contract, [model], {})
    site = make_site_folder(workdir / "east_scans")
    capsys.readouterr()
    assert main(["adapt", "--model", "models:/small/1", "--data", str(site), "--site",
                 "east"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps no reference of its validation images as an adapted " \
        "network sees them" in err[0], err
    assert [str(v.version) for v in client.search_model_versions("name = 'small'")] == ["1"]


def test_predict_says_why_an_image_gets_no_probability(sites: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A CT slice and a head radiograph are refused by their headers, a text file is
    unreadable, and an image unlike the training ones is flagged; each says so in the
    table and in CSV."""
    import csv
    import io

    from dicom_copies import write_dicom
    from PIL import Image
    from pydicom import dcmread

    from pneumo_exp.cli import main

    xray = next(sites["folder"].rglob("*.jpeg"))
    pixels = np.asarray(Image.open(xray).convert("L"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, modality, part in (("ct.dcm", "CT", ""), ("head.dcm", "DX", "HEAD"),
                                 ("chest.dcm", "DX", "CHEST")):
        path = write_dicom(pixels, folder / name)
        ds = dcmread(path)
        ds.Modality = modality
        if part:
            ds.BodyPartExamined = part
        ds.save_as(path, enforce_file_format=True)
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((60, 60), 250, np.uint8)).save(folder / "blank.png")
    assert main(["predict", "--model", "models:/sites/1", "--format", "csv", str(folder)]) == 0
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(
        capsys.readouterr().out))}
    assert rows["ct.dcm"]["label"] == "not a chest radiograph" and not rows["ct.dcm"][
        "probability"]
    assert "Modality CT" in rows["ct.dcm"]["reason"]
    assert "BodyPartExamined is HEAD" in rows["head.dcm"]["reason"]
    assert rows["chest.dcm"]["label"] in ("NORMAL", "PNEUMONIA")
    assert rows["notes.txt"]["label"] == "unreadable" and rows["notes.txt"]["reason"]
    assert "unlike the training images" in rows["blank.png"]["check"]
    assert main(["predict", "--model", "models:/sites/1", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "1 not a chest radiograph" not in table and "2 not a chest radiograph" in table
