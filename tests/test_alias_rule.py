"""The alias rule on every path after a site's search (registry/aliases.py): only a tested
promotion of the training site's trials moves `champion` or `challenger`; a site's trials
become its own version, or are refused with one message, whatever promote's options; a
site version names the one base its trials started from, as a search resumed after the
champion moved records it; a version from `adapt` carries its checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import OVERRIDES, make_folder_dataset, make_site_folder
from PIL import Image

from pneumo_exp.tracking.names import (
    CHALLENGER,
    CHAMPION,
    ROLE_SEARCH,
    TAG_BASE_VERSION,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SITE,
)

MODEL = "pneumonia-classifier"
ONE_VIEW = ["--set", "registry.views=[original]"]  # promote scores once per image


def _site_search(north: Path, *extra: str) -> int:
    from pneumo_exp.cli import main

    return main(["search", "site", "--base", f"models:/{MODEL}@{CHAMPION}", "--data",
                 str(north), "--site", "north", "--max-trials", "2", "--set",
                 "space.epochs=1", "--set", "search.num_initial_points=2", *extra])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store as a hospital has it after a site's search: the training site's search (2
    trials), its best promoted (version 1, champion and challenger), and site north's
    search from the champion (2 trials)."""
    from pneumo_exp.cli import main
    from pneumo_exp.config import load_config
    from pneumo_exp.search.run import run_search

    root = tmp_path_factory.mktemp("aliases")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        home = make_folder_dataset(root / "chest_xray",
                                   {"train": (24, 36), "val": (20, 20), "test": (6, 6)})
        run_search(load_config("aug_cnn", {**OVERRIDES, "train.epochs": 1,
                                           "data.root": str(home)}), verbose=0)
        assert main(["promote", "aug_cnn", "--top", "1", *ONE_VIEW]) == 0
        north = make_site_folder(tmp_path_factory.mktemp("site") / "north_scans")
        assert _site_search(north) == 0
    return {"root": root, "north": north}


@pytest.fixture
def store(made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A copy of that store for one test (its registry changes stay its own; the data
    folders stay where the searches read them)."""
    from pneumo_exp.tracking.store import connect

    copy = tmp_path / "store"
    shutil.copytree(made["root"], copy, symlinks=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return connect()


def _state(client: Any) -> dict[str, Any]:
    """The registry: each version's site (None: the training site's) and the aliases."""
    versions = {str(v.version): v.tags.get(TAG_SITE)
                for v in client.search_model_versions(f"name = '{MODEL}'")}
    aliases = {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    return {"versions": versions, "aliases": aliases}


def _trials(client: Any, site: str | None) -> list[Any]:
    experiment = client.get_experiment_by_name("pneumo-exp/site" if site else
                                               "pneumo-exp/aug_cnn")
    return [r for r in client.search_runs([experiment.experiment_id],
                                          "tags.`pneumo.role` = 'trial'")
            if r.data.tags.get(TAG_SITE) == site]


def _searches(client: Any) -> list[Any]:
    experiment = client.get_experiment_by_name("pneumo-exp/site")
    return client.search_runs([experiment.experiment_id], f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}'")


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one line a refused command prints."""
    from pneumo_exp.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


BEFORE = {"versions": {"1": None}, "aliases": {CHAMPION: "1", CHALLENGER: "1"}}


def test_a_site_search_promoted_without_its_site_is_refused(store: Any,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    """`make promote ARCH=site` without SITE=, and one search's trials without it."""
    assert _state(store) == BEFORE
    assert "give SITE=<name>" in _refused(["promote", "site", *ONE_VIEW], capsys)
    name = _searches(store)[0].data.tags[TAG_SEARCH]
    assert "give SITE=<name>" in _refused(["promote", "--search", name, *ONE_VIEW], capsys)
    assert _state(store) == BEFORE


def test_a_site_trial_by_its_run_id_becomes_its_sites_version(store: Any,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    """`pneumo-exp promote --run <site trial>`: site north's version, its alias only."""
    from pneumo_exp.cli import main

    trial = _trials(store, "north")[0]
    capsys.readouterr()
    assert main(["promote", "--run", trial.info.run_id, *ONE_VIEW]) == 0
    out = capsys.readouterr().out
    assert "alias site-north" in out and "Champion: version 1 (unchanged)" in out
    assert _state(store) == {"versions": {"1": None, "2": "north"},
                             "aliases": {CHAMPION: "1", CHALLENGER: "1", "site-north": "2"}}
    assert store.get_model_version(MODEL, "2").tags[TAG_BASE_VERSION] == f"{MODEL}/1"
    # its card gives its figures on the training hospital's validation too, so that a
    # version that forgot its base's patients says so
    card = store.get_model_version(MODEL, "2").description
    assert "| the training hospital's validation |" in card
    assert "**Its base's patients.** It " in card
    assert "on the training hospital's validation, against its base's" in card
    # asked again: the version it already is, with its alias; `models` names its base
    capsys.readouterr()
    assert main(["promote", "--run", trial.info.run_id, *ONE_VIEW]) == 0
    assert "version 2 (aliases: site-north); nothing registered" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert f"site north (from {MODEL}/1)" in capsys.readouterr().out
    # asked for another site's, or for a home trial as a site's: refused
    assert "not of site south" in _refused(
        ["promote", "--run", trial.info.run_id, "--site", "south", *ONE_VIEW], capsys)
    home = _trials(store, None)[0]
    assert "of the training site, not of site north" in _refused(
        ["promote", "site", "--site", "north", "--run", home.info.run_id, *ONE_VIEW], capsys)


@pytest.mark.parametrize("options", [["--top", "1"], ["--top", "4", "--any-trial"]])
def test_a_plain_promote_never_ranks_a_site_trial(store: Any, options: list[str],
                                                  capsys: pytest.CaptureFixture) -> None:
    """`make promote` (every architecture) when a site trial ranks first: its
    validation AUC is the site's, never compared with the champion's; only the training
    site's trials are ranked (TOP=4: its two, never a site's with them)."""
    from pneumo_exp.cli import main

    for trial in _trials(store, "north"):  # the site's trials rank first
        store.log_metric(trial.info.run_id, "best_val_auc", 1.0)
    capsys.readouterr()
    assert main(["promote", *options, *ONE_VIEW]) == 0
    state = _state(store)
    assert set(state["versions"].values()) == {None}  # no site version, no site alias
    assert set(state["aliases"]) == {CHAMPION, CHALLENGER}
    assert state["aliases"][CHAMPION] in state["versions"]
    home = {t.info.run_id for t in _trials(store, None)}
    for number in state["versions"]:
        sources = store.get_model_version(MODEL, number).tags["pneumo.source_run_ids"]
        assert set(sources.split(",")) <= home


def test_the_rule_refuses_a_mix_of_sites_and_of_bases(store: Any) -> None:
    """The one rule every promotion passes: a version is for one site, of one base."""
    from pneumo_exp.errors import UserError
    from pneumo_exp.registry.aliases import promotion_site

    site, home = _trials(store, "north"), _trials(store, None)
    assert promotion_site(site, "north") == "north" and promotion_site(home, None) is None
    assert promotion_site(site[:1], None) == "north"
    with pytest.raises(UserError, match="different sites"):
        promotion_site([home[0], site[0]], None)
    with pytest.raises(UserError, match="not of site north"):
        promotion_site(home[:1], "north")


def test_a_training_site_version_without_a_test_split_is_refused(
        store: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Trials of the training site's kind searched on a folder without test/: no test
    evaluation, so no version that could become challenger or champion."""
    from pneumo_exp.cli import main

    folder = make_site_folder(tmp_path / "untested", 40, 40)
    assert main(["search", "aug_cnn", "--data", str(folder), "--name", "untested",
                 "--max-trials", "1", "--set", "search.screen_trials=0", "--set",
                 "train.epochs=1", "--set", "data.image_size=48"]) == 0
    assert "has no test split" in _refused(["promote", "aug_cnn", "--search", "untested",
                                            "--any-trial", *ONE_VIEW], capsys)
    assert _state(store) == BEFORE


def test_a_site_search_names_the_version_it_started_from(store: Any, made: dict[str, Path],
                                                         capsys: pytest.CaptureFixture
                                                         ) -> None:
    """BASE=@champion is read once, as a version number: after the champion moves, the
    same command is another search that records the new base, a search resumed by name
    from another base is refused, and a site promotion over trials of both bases is refused;
    one search's trials promote with their own base."""
    from pneumo_exp.cli import main

    (first,) = _searches(store)
    assert first.data.tags[TAG_BASE_VERSION] == f"{MODEL}/1"
    assert first.data.params["site.base"] == f"models:/{MODEL}/1"
    other = next(t for t in _trials(store, None)
                 if t.info.run_id != store.get_model_version(MODEL, "1").tags[
                     "pneumo.source_run_ids"])
    assert main(["promote", "--run", other.info.run_id, *ONE_VIEW]) == 0
    store.set_registered_model_alias(MODEL, CHAMPION, "2")  # the champion moves
    name = first.data.tags[TAG_SEARCH]
    assert f"started from {MODEL}/1" in _refused(
        ["search", "site", "--base", f"models:/{MODEL}@{CHAMPION}", "--data",
         str(made["north"]), "--site", "north", "--name", name], capsys)
    assert _site_search(made["north"]) == 0
    (second,) = [s for s in _searches(store) if s.info.run_id != first.info.run_id]
    assert second.data.tags[TAG_SEARCH] != name
    assert second.data.tags[TAG_BASE_VERSION] == f"{MODEL}/2"
    assert {t.data.tags[TAG_BASE_VERSION] for t in _trials(store, "north")
            if t.data.tags[TAG_SEARCH] == name} == {f"{MODEL}/1"}
    assert "different base versions" in _refused(
        ["promote", "site", "--site", "north", "--top", "4", "--any-trial", *ONE_VIEW],
        capsys)
    assert main(["promote", "site", "--site", "north", "--top", "4", "--any-trial",
                 "--search", second.data.tags[TAG_SEARCH], *ONE_VIEW]) == 0
    site_version = store.get_model_version_by_alias(MODEL, "site-north")
    assert site_version.tags[TAG_BASE_VERSION] == f"{MODEL}/2"
    assert _state(store)["aliases"] == {CHAMPION: "2", CHALLENGER: "2",
                                        "site-north": str(site_version.version)}


def test_an_adapted_version_carries_its_checks(store: Any, made: dict[str, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """`make adapt`: the version carries the feature references, so `site-check` gives a
    verdict on it and `predict` notes an image unlike its training images; its alias only."""
    from pneumo_exp.cli import main
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    assert main(["adapt", "--model", f"models:/{MODEL}@{CHAMPION}", "--data",
                 str(made["north"]), "--site", "north"]) == 0
    adapted = f"models:/{MODEL}@site-north"
    contract = classifier(load(adapted)).contract
    source = classifier(load(f"models:/{MODEL}/1")).contract
    assert contract.features is not None and contract.features_adapted is not None
    # judged against validation as the adapted network sees it
    assert np.array_equal(contract.features.reference, source.features_adapted.reference)
    assert _state(store)["aliases"] == {CHAMPION: "1", CHALLENGER: "1", "site-north": "2"}
    capsys.readouterr()
    assert main(["site-check", "--model", adapted, "--data", str(made["north"]), "--out",
                 str(tmp_path / "reports")]) == 0
    assert "Verdict: " in capsys.readouterr().out
    pattern = np.zeros((48, 48, 3), np.uint8)  # a colour test card, no chest
    pattern[:, :16, 0] = pattern[:, 16:32, 1] = pattern[:, 32:, 2] = 255
    Image.fromarray(pattern).save(tmp_path / "card.png")
    assert main(["predict", "--model", adapted, "--format", "csv",
                 str(tmp_path / "card.png")]) == 0
    assert "unlike the training images" in capsys.readouterr().out


@pytest.mark.parametrize("site", [None, "north"])
def test_aliases_move_last(store: Any, site: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promotion that fails after its version is written (here: its card) moves no alias:
    the new version stays without one, and the champion stays where it was."""
    from pneumo_exp.cli import main
    from pneumo_exp.registry import model_card, site_version

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("the store went away while the card was written")

    monkeypatch.setattr(model_card, "publish", broken)
    monkeypatch.setattr(site_version, "publish", broken)
    if site:
        argv = ["promote", "site", "--site", "north"]
    else:  # the training site's trial that version 1 is not
        one = store.get_model_version(MODEL, "1").tags["pneumo.source_run_ids"]
        other = next(t for t in _trials(store, None) if t.info.run_id not in one)
        argv = ["promote", "--run", other.info.run_id]
    with pytest.raises(OSError, match="went away"):
        main([*argv, *ONE_VIEW])
    state = _state(store)
    assert state["versions"] == {"1": None, "2": site}  # the version was written ...
    assert state["aliases"] == BEFORE["aliases"]         # ... and no alias moved to it
