"""What each `pneumo-exp` subcommand does with its parsed arguments (main.py parses them).
Heavy imports (TensorFlow, MLflow) happen inside the commands that need them."""

from pneumo_exp.cli.commands.models import (
    cmd_adapt,
    cmd_evaluate,
    cmd_explain,
    cmd_models,
    cmd_predict,
    cmd_promote,
    cmd_serve,
    cmd_site_check,
)
from pneumo_exp.cli.commands.store import (
    cmd_cache,
    cmd_compare,
    cmd_delete_search,
    cmd_runs,
    cmd_server,
    cmd_ui,
    cmd_users,
)
from pneumo_exp.cli.commands.training import cmd_cv, cmd_data_fetch, cmd_data_sample, cmd_search

__all__ = ["cmd_adapt", "cmd_cache", "cmd_compare", "cmd_cv", "cmd_data_fetch", "cmd_data_sample",
           "cmd_delete_search", "cmd_evaluate", "cmd_explain", "cmd_models", "cmd_predict",
           "cmd_promote", "cmd_runs", "cmd_search", "cmd_serve", "cmd_server", "cmd_site_check",
           "cmd_ui",
           "cmd_users"]
