"""The `pneumo-exp` command: one entry point, one subcommand per job. Make targets call it
with `--make`, which reads their variables from the environment (options.py)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from pneumo_exp.cli import options
from pneumo_exp.cli.commands import models, store, training
from pneumo_exp.config import FULL_DATA_DIR, SAMPLE_DIR, STATE_DIR
from pneumo_exp.errors import UserError
from pneumo_exp.fileio import keep_private
from pneumo_exp.search import interrupts
from pneumo_exp.tracking.access import PERMISSIONS, refusal

# name -> (help, description (None: the help; SUPPRESS: none), function)
COMMANDS = {
    "search": ("search one architecture, tracked in MLflow",
               "Run (or resume) a Keras Tuner search configured by experiments/ARCH.yaml; "
               "every trial is a nested MLflow run.", training.cmd_search),
    "cv": ("k-fold cross-validation of one configuration, tracked",
           "Cross-validate the study's configuration (--from default) or the best trial of "
           "the latest search (--from best) on the train split, in folds grouped by patient.",
           training.cmd_cv),
    "promote": ("register the best validation model (or the k best as an ensemble), "
                "evaluated once on test",
                "Register the trial with the best validation objective (of ARCH, or of all "
                "architectures), or an ensemble of the --top k best, in the MLflow Model "
                "Registry with its preprocessing, a temperature and a decision threshold "
                "chosen on validation; evaluate it on the test split.", models.cmd_promote),
    "adapt": ("adapt a registered model to a new site's unlabeled images",
              "Re-estimate the model's batch-normalization statistics on the images under "
              "--data (no label is read) and register the result as a new version with the "
              "alias site-<name>.", models.cmd_adapt),
    "predict": ("probability of pneumonia for image files and folders", None,
                models.cmd_predict),
    "evaluate": ("evaluate a registered model on a labelled folder", None,
                 models.cmd_evaluate),
    "site-check": ("before labels: does a site's unlabeled images look like the training "
                   "data to a registered model?",
                   "Compare a site's unlabeled images (a folder, or a PACS query) with the "
                   "version's validation images: its scores, its share called PNEUMONIA and its "
                   "batch-normalization statistics, as registered and adapted to the site (in "
                   "memory); one verdict line and a one-page figure, logged as an evaluation "
                   "run.", models.cmd_site_check),
    "explain": ("Grad-CAM overlays of a registered model on image files",
                "Write an overlay per image: where the model looked for pneumonia (Grad-CAM "
                "on its last convolutional feature map; the mean over an ensemble's members),"
                " with the probability and label.", models.cmd_explain),
    "runs": ("list the searches and cross-validations, newest first; or one search's "
             "trials and hyperparameter importance", None, store.cmd_runs),
    "compare": ("compare searches: best so far against time and trials, their best trials",
                None, store.cmd_compare),
    "models": ("list the registered versions with their aliases and figures", None,
               models.cmd_models),
    "delete-search": ("delete one search: its MLflow runs and its tuner state", None,
                      store.cmd_delete_search),
    "cache": ("list what is kept in the state folder (decoded images, PACS instances, tuner "
              "state), where and how large; --clear deletes it",
              "List what pneumo-exp keeps besides the MLflow store, or delete it with --clear "
              "(--older-than DAYS: what no command used for that long).", store.cmd_cache),
    "serve": ("serve a registered model over HTTP on 127.0.0.1 (mlflow models serve)", None,
              models.cmd_serve),
    "ui": ("serve the MLflow UI of the local store (127.0.0.1 by default)", argparse.SUPPRESS,
           store.cmd_ui),
    "server": ("serve an MLflow tracking server for a team or a cluster (127.0.0.1 by "
               "default)", argparse.SUPPRESS, store.cmd_server),
}


class Parser(argparse.ArgumentParser):
    """argparse, whose errors name make variables when a make target called it."""

    make_command: str | None = None

    def error(self, message: str) -> NoReturn:
        if self.make_command:  # the flags' usage line would not help a make user
            self.exit(2, f"{self.prog}: error: "
                         f"{options.make_words(message, self.make_command)} (make vars lists "
                         "the variables)\n")
        super().error(message)


def build_parser(make_command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `make_command`, its errors name that command's make variables."""
    parser = Parser(prog="pneumo-exp", description="Experiment-tracked hyperparameter search "
                    "for pneumonia detection on chest X-rays (Keras Tuner + MLflow).")
    parser.make_command = make_command
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--make", action="store_true",
                        help="read the options from make variables (what make targets do)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for name, (help_text, description, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        p.make_command = make_command if name == make_command else None
        options.add_arguments(p, name)
        p.set_defaults(func=func)
    sub.add_parser("vars", help="the make variables of every command").set_defaults(
        func=lambda args: print(options.table()) or 0)

    users = sub.add_parser("users", help="users of a tracking server started with --auth, "
                           "and their permissions (as its admin)")
    users.set_defaults(func=store.cmd_users)
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    add = users_sub.add_parser("add", help="add a user; the password from "
                               "$PNEUMO_EXP_USER_PASSWORD or --password-file")
    add.add_argument("username")
    add.add_argument("--password-file", help="a file whose first line is the password")
    grant = users_sub.add_parser("grant", help="grant a user READ, EDIT or MANAGE on "
                                 "experiments and registered models")
    grant.add_argument("username")
    grant.add_argument("--permission", required=True, choices=PERMISSIONS,
                       help="READ: browse and predict; EDIT: also search, promote, adapt; "
                       "MANAGE: also delete and grant")
    grant.add_argument("--experiment", action="append", help="an architecture (aug_cnn) or "
                       "experiment name (repeatable)")
    grant.add_argument("--model", action="append", help="a registered model (repeatable)")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sample = data_sub.add_parser("sample", help="build the small bundled sample from a full "
                                 "dataset folder, by whole patients")
    sample.add_argument("--from", dest="source", required=True, help="full dataset folder")
    sample.add_argument("--to", default=str(SAMPLE_DIR), help="output folder (default "
                        "data/sample)")
    sample.add_argument("--size", type=int, default=None, help="image side in pixels")
    sample.add_argument("--seed", type=int, default=0, help="seed of the patient draw")
    sample.set_defaults(func=training.cmd_data_sample)
    fetch = data_sub.add_parser("fetch", help="download or unpack a dataset archive (zip/tar) "
                                "into the folder layout")
    fetch.add_argument("source", help="http(s) URL or local path of a .zip/.tar[.gz] archive")
    fetch.add_argument("--to", default=str(FULL_DATA_DIR),
                       help="destination folder (default data/chest_xray)")
    fetch.set_defaults(func=training.cmd_data_fetch)
    return parser


def _with_make_variables(argv: list[str]) -> tuple[list[str], str | None]:
    """`pneumo-exp --make COMMAND ...`: the command's make variables become its options."""
    i = argv.index("--make") + 1 if "--make" in argv else len(argv)
    j = next((j for j in range(i, len(argv)) if not argv[j].startswith("-")), None)
    if j is None:
        return argv, None
    return [*argv[:j + 1], *options.from_make(argv[j]), *argv[j + 1:]], argv[j]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args_in, make_command = _with_make_variables(list(sys.argv[1:] if argv is None else argv))
    except UserError as e:  # a make variable's quotes do not close
        print(f"pneumo-exp: error: {e}", file=sys.stderr)
        return e.exit_code
    args = build_parser(make_command).parse_args(args_in)
    interrupts.install()
    keep_private(STATE_DIR)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("mlflow", "alembic", "absl", "tensorflow", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom logs each decoder's failure with its traceback, and every irregular element;
    # the file's one line (skipped, unreadable, not a chest radiograph) already says why
    # (a filter: pydicom sets its logger's level when it is imported)
    for reader in ("pydicom", "PIL"):
        logging.getLogger(reader).addFilter(lambda record: bool(args.debug))
    # Each trial's models trace their own predict functions; TensorFlow calls it retracing.
    logging.getLogger("tensorflow").addFilter(lambda r: "retracing" not in r.getMessage())
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        # a tracking server's refusal is the user's to fix, not a bug
        error = e if isinstance(e, (UserError, KeyboardInterrupt)) else refusal(e)
        if error is None:
            raise
        if args.debug:
            traceback.print_exc()
        if isinstance(error, KeyboardInterrupt):
            print("pneumo-exp: interrupted.", file=sys.stderr)
            return 130
        message = options.make_words(str(error), make_command) if make_command else str(error)
        print(f"pneumo-exp: error: {message}", file=sys.stderr)
        return error.exit_code
