"""Which registered version a `models:/` URI names, read with MLflow's public client API:
`models:/name/3`, `models:/name@champion` (where the alias points now: an alias moves, so
what records a base or a source records the number) or `models:/name/latest` (the highest
number). A stage (`models:/name/Staging`, MLflow's deprecated registry) names nothing."""

from __future__ import annotations

import re

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pneumo_exp.errors import UserError

PREFIX = "models:/"
LATEST = "latest"
_FORM = re.compile(r"^(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")


def registered_version(client: MlflowClient, uri: str) -> ModelVersion:
    """The version `uri` names; a UserError naming the URI when it names none."""
    found = _FORM.match(uri.removeprefix(PREFIX)) if uri.startswith(PREFIX) else None
    if found is None or not (found["alias"] or found["version"].isdigit()
                             or found["version"].lower() == LATEST):
        raise UserError(f"{uri} is not a registered version's URI: write "
                        f"{PREFIX}<name>/<version>, {PREFIX}<name>@<alias> or "
                        f"{PREFIX}<name>/{LATEST}. List them with `pneumo-exp models`.")
    name, version, alias = found["name"], found["version"], found["alias"]
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version.isdigit():
            return client.get_model_version(name, version)
        newest = client.search_model_versions(f"name = '{name}'", max_results=1,
                                              order_by=["version_number DESC"])
    except mlflow.exceptions.MlflowException as e:
        why = str(e).splitlines()[0].rstrip(".")
        raise UserError(f"no registered model version {uri}: {why}. List them with "
                        "`pneumo-exp models`.") from None
    if not newest:
        raise UserError(f"no registered model version {uri}: model '{name}' has no version. "
                        "List them with `pneumo-exp models`.")
    return newest[0]


def version_uri(version: ModelVersion) -> str:
    """The URI of this version by its number: what stays true when aliases move."""
    return f"{PREFIX}{version.name}/{version.version}"
