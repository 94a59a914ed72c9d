"""Reading the store whole: every page of an MLflow search (one page holds 1,000 runs), and
the values of a filter string quoted. MLflow only; no TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pneumo_exp.errors import UserError


def quoted(value: object) -> str:
    """`value` as a string literal of an MLflow filter. MLflow's filter grammar has no
    escapes: a value is quoted with the quote it does not hold, and one holding both kinds
    cannot be searched for."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise UserError(f"the name {text!r} holds both ' and \", which MLflow cannot search for; "
                    "use a name with one kind of quote at most.")


def every(search: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """All the results of an MLflow client search (`client.search_runs`,
    `search_model_versions`, `search_experiments`: a PagedList), page after page."""
    results: list[Any] = []
    token = None
    while True:
        page = search(*args, page_token=token, **kwargs)
        results.extend(page)
        if not (token := page.token):
            return results


def children(client: MlflowClient, experiment: str, parent_run_id: str | None, where: str = "",
             **kwargs: Any) -> list[Run]:
    """Every nested run of a parent run; `where` adds conditions (" and ...")."""
    return every(client.search_runs, [experiment],
                 f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quoted(parent_run_id)}{where}", **kwargs)
