"""Reading the store whole: every page of a search (a page holds 1,000 runs), and names with
quotes in filter strings. Real MLflow stores (SQLite) in the test's folder."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_folder_dataset
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp.cli import main
from pneumo_exp.config import load_config
from pneumo_exp.errors import UserError
from pneumo_exp.registry.selection import best_trial_runs, objective_of
from pneumo_exp.tracking.listing import find_search
from pneumo_exp.tracking.names import (
    FULL,
    ROLE_SEARCH,
    ROLE_TRIAL,
    SCREEN,
    TAG_CANDIDATE,
    TAG_FIDELITY,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SITE,
    TAG_SOURCES,
    TAG_TRIAL,
)
from pneumo_exp.tracking.queries import every, quoted
from pneumo_exp.tracking.runs import create_parent_run
from pneumo_exp.tracking.store import connect, experiment_id

QUOTED_NAMES = ["o'neil's search", 'the "wide" one', "plain"]


def test_every_reads_every_page(workdir: Path) -> None:
    client = connect()
    experiment = client.create_experiment("pages")
    ids = {client.create_run(experiment).info.run_id for _ in range(5)}
    assert len(client.search_runs([experiment], max_results=2)) == 2
    assert {r.info.run_id for r in every(client.search_runs, [experiment], max_results=2)} == ids


def test_a_quoted_value_finds_exactly_its_name(workdir: Path) -> None:
    client = connect()
    experiment = client.create_experiment("quotes")
    ids = {name: client.create_run(experiment, tags={"name": name}).info.run_id
           for name in QUOTED_NAMES}
    for name, run_id in ids.items():
        (run,) = client.search_runs([experiment], f"tags.name = {quoted(name)}")
        assert run.info.run_id == run_id
    with pytest.raises(UserError, match="holds both ' and \""):
        quoted("o'neil's \"wide\" one")


def _trials(client: MlflowClient, search: str, parent: str, experiment: str, count: int,
            value: float, fidelity: str = FULL, first: int = 0, **tags: str) -> list[str]:
    """`count` finished trial runs of the search `search` (parent run `parent`), trial ids
    from `first`, each with the objective `value`: the tags and figures a search writes and
    promote and the listings read."""
    objective = objective_of("aug_cnn")[0]
    run_ids = []
    for i in range(first, first + count):
        run = client.create_run(experiment, run_name=f"trial-{i}", tags={
            TAG_ROLE: ROLE_TRIAL, MLFLOW_PARENT_RUN_ID: parent, TAG_SEARCH: search,
            TAG_TRIAL: str(i), TAG_FIDELITY: fidelity,
            TAG_CANDIDATE: str(fidelity == FULL).lower(), **tags})
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric(f"best_{objective}", value, now, 0)])
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    return run_ids


def _search(client: MlflowClient, name: str, **tags: str) -> tuple[str, str]:
    """A search's parent run as a search writes it (its configuration, its name)."""
    cfg = load_config("aug_cnn")
    experiment = experiment_id(client, cfg.experiment_name)
    parent = create_parent_run(client, experiment, cfg, f"search-{name}", ROLE_SEARCH, "d0",
                               {TAG_SEARCH: name, **tags}, {})
    return experiment, parent


def test_names_with_quotes_list_promote_and_delete(workdir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A search named with a quote is listed, promoted from and deleted; a site named with
    one is promoted from; a name holding both kinds is refused in one message."""
    client = connect()
    trials = {}
    for name in QUOTED_NAMES:
        experiment, parent = _search(client, name, **{TAG_SITE: f"st. {name}"})
        trials[name] = _trials(client, name, parent, experiment, 2, 0.8,
                               **{TAG_SITE: f"st. {name}"})
    for name in QUOTED_NAMES:
        assert find_search(client, name).data.tags[TAG_SEARCH] == name
        assert main(["runs", "--search", name]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"Trials of search '{name}'")
        assert [line.split()[0] for line in out if line[:1].isdigit()] == ["0", "1"]
        assert {r.info.run_id for r in best_trial_runs(client, "aug_cnn", 3, search=name,
                                                       site=f"st. {name}")} == set(trials[name])
        assert {r.info.run_id for r in best_trial_runs(client, "aug_cnn", 3,
                                                       site=f"st. {name}")} == set(trials[name])
    assert main(["promote", "--site", "st. o'neil", "--model-name", "m"]) == 2
    assert "of site 'st. o'neil' to promote" in capsys.readouterr().err
    assert main(["runs", "--search", "o'neil's \"wide\" one"]) == 2
    assert "holds both ' and \"" in capsys.readouterr().err
    assert main(["delete-search", "o'neil's search", "--yes"]) == 0
    for run_id in trials["o'neil's search"]:
        assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(trials["plain"][0]).info.lifecycle_stage == "active"


@pytest.mark.slow
def test_a_store_of_more_than_1000_runs(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A real search, and 1,001 screened trials of it that scored higher (a page of a search
    holds 1,000 runs): all of its trials are listed, promote finds the one full-fidelity
    trial behind them, and deleting the search deletes every run."""
    from pneumo_exp.search.run import run_search

    data = make_folder_dataset(workdir / "data")
    overrides = {"search.max_trials": 1, "train.epochs": 1, "data.image_size": 32,
                 "data.root": str(data), "search.tuner": "random", "space.conv_blocks": 2}
    result = run_search(load_config("aug_cnn", overrides), name="big", verbose=0)
    client = connect()
    screened = _trials(client, "big", result.parent_run_id, result.experiment_id, 1001, 2.0,
                       fidelity=SCREEN, first=100)  # above any real figure: the first page
    assert main(["runs", "--search", "big"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert Counter(r[1] for r in rows if r and r[0].isdigit()) == {SCREEN: 1001, FULL: 1}
    assert main(["promote", "aug_cnn", "--search", "big", "--top", "1",
                 "--model-name", "big"]) == 0
    (version,) = client.search_model_versions("name = 'big'")
    assert version.tags[TAG_SOURCES] == result.best_run_id
    client.delete_registered_model("big")
    assert main(["delete-search", "big", "--yes"]) == 0
    for run_id in (result.parent_run_id, result.best_run_id, screened[0], screened[-1]):
        assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert not every(client.search_runs, [result.experiment_id],
                     f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{result.parent_run_id}'")

