"""`models:/` URIs resolved by MLflow's public client API, in one helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pneumo_exp.errors import UserError
from pneumo_exp.tracking.model_uri import registered_version, version_uri

PACKAGE = Path(__file__).resolve().parents[1] / "pneumo_exp"


@pytest.fixture
def client(workdir: Path) -> Any:
    from pneumo_exp.tracking.store import connect

    client = connect()
    client.create_registered_model("m")
    for _ in range(11):  # 11 > 9: the newest is the highest number, not the last in text
        client.create_model_version("m", str(workdir))
    client.set_registered_model_alias("m", "champion", "3")
    return client


@pytest.mark.parametrize(("uri", "number"), [
    ("models:/m/2", "2"), ("models:/m@champion", "3"), ("models:/m/latest", "11"),
    ("models:/m/Latest", "11")])
def test_a_uri_names_one_version(client: Any, uri: str, number: str) -> None:
    version = registered_version(client, uri)
    assert (version.name, str(version.version)) == ("m", number)
    assert version_uri(version) == f"models:/m/{number}"


@pytest.mark.parametrize(("uri", "says"), [
    ("models:/m/12", "no registered model version models:/m/12: "),
    ("models:/m@nobody", "no registered model version models:/m@nobody: "),
    ("models:/other/latest", "model 'other' has no version"),
    ("models:/m/Production", "is not a registered version's URI"),  # a stage: none here
    ("models:/m", "is not a registered version's URI"),
    ("runs:/abc/model", "is not a registered version's URI")])
def test_a_uri_that_names_none_gets_one_message(client: Any, uri: str, says: str) -> None:
    with pytest.raises(UserError, match="List them with `pneumo-exp models`") as e:
        registered_version(client, uri)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_no_private_mlflow_store_api() -> None:
    """MLflow's `mlflow.store` is its internals: they change in any minor release."""
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if "mlflow.store." in line]
    assert not found, found
