"""The options of the `pneumo-exp` commands, in one table: each row's flag, help,
subcommands, the configuration key it sets (if any) and its make variable. The argparse
options (main.py), the configuration overrides, a distributed search's argv
(commands/training.py) and the make targets' variables, which `pneumo-exp --make <command>`
reads from the environment and names in its error messages, all follow from it."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pneumo_exp.config import LOCALHOST, SERVE_PORT, UI_PORT, parse_override
from pneumo_exp.errors import UserError

CONFIG_COMMANDS = ("search", "cv")
MODEL_COMMANDS = ("predict", "evaluate", "serve", "adapt", "explain", "site-check")
PACS_COMMANDS = ("predict", "evaluate", "adapt", "site-check")  # read images from a PACS


@dataclass(frozen=True)
class Option:
    flag: str  # "--max-trials", or a positional's name ("arch")
    help: str
    commands: tuple[str, ...]
    key: str | None = None  # the configuration key it sets, e.g. search.max_trials
    type: Callable[[str], Any] = str
    make: str | None = None  # make variable; default: the flag in capitals (MAX_TRIALS)
    flag_only: bool = False  # a switch (store_true)
    nargs: str | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    name: str | None = None  # attribute on the parsed arguments; default from the flag

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    @property
    def dest(self) -> str:
        return self.name or self.flag.lstrip("-").replace("-", "_")

    @property
    def variable(self) -> str:
        return self.make or self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("arch", "architecture: a file in experiments/ (default aug_cnn)",
           CONFIG_COMMANDS, nargs="?", default="aug_cnn"),
    Option("--data", "dataset folder (ROOT/{train,val,test}/{NORMAL,PNEUMONIA}) or MedMNIST "
           ".npz; default data/chest_xray, else the bundled sample", CONFIG_COMMANDS,
           key="data.root"),
    Option("--epochs", "maximum epochs per trial or fold, screened trials included",
           CONFIG_COMMANDS, key="train.epochs", type=int),
    Option("--image-size", "images are resized to SIZE x SIZE", CONFIG_COMMANDS,
           key="data.image_size", type=int),
    Option("--batch-size", "training batch size", CONFIG_COMMANDS, key="train.batch_size",
           type=int),
    Option("--seed", "seed of splits, tuner and training", CONFIG_COMMANDS,
           key="search.seed", type=int),
    Option("--max-trials", "trials in all, screened ones included. A search that screens keeps "
           "its configured split (aug_cnn: 12 screened + 3 full of 15; 30: 24 + 6); when that "
           "leaves no more to screen than to train, every trial is at full fidelity (2: 2 full)",
           ("search",), key="search.max_trials", type=int),
    Option("--tuner", "random, bayesian or hyperband", ("search",), key="search.tuner"),
    Option("--time-budget", "start no trial and no epoch after this many minutes",
           ("search",), key="search.time_budget_min", type=float),
    Option("--name", "search name; the same name resumes (default: <tuner>-<digest of the "
           "configuration>)", ("search",)),
    Option("--fresh", "discard this search's tuner state and start over", ("search",),
           flag_only=True),
    Option("--workers", "run a chief and this many workers on this machine", ("search",),
           type=int, default=0),
    Option("--role", "distributed search: this process's role (with --oracle)", ("search",),
           choices=("chief", "worker")),
    Option("--oracle", "distributed search: HOST:PORT of the chief's oracle", ("search",)),
    Option("--worker-id", "stable id of this worker (default worker-<hostname>); a restarted "
           "worker resumes its trial", ("search",)),
    Option("--base", "ARCH=site: the registered version a site's search starts from, e.g. "
           "models:/pneumonia-classifier@champion", ("search",), key="site.base"),
    Option("--site", "ARCH=site: the site's name (default: the data folder's); its version "
           "gets the alias site-<name>", ("search",), key="site.name"),
    Option("--folds", "number of folds (default 5)", ("cv",), type=int, default=5),
    Option("--from", "default: the study's configuration; best: the latest search's best "
           "trial", ("cv",), make="FROM", default="default", choices=("default", "best"),
           name="source"),
    Option("--set", "any configuration key, e.g. --set space.dropout=0.2 (repeatable; "
           "promote reads registry.*, e.g. --set 'registry.views=[original]')",
           (*CONFIG_COMMANDS, "promote"), make="SET"),
    Option("arch", "only this architecture (default: all)", ("promote",), nargs="?"),
    Option("--top", "package the up to k best trials validated alike as one ensemble "
           "(default registry.top: 3; 1: the best trial alone)", ("promote",), type=int),
    Option("--run", "promote this trial run instead of the best", ("promote",)),
    Option("--search", "promote the best trials of this search only (its name)", ("promote",),
           make="NAME"),
    Option("--any-trial", "consider every finished full-fidelity trial, also those stopped "
           "by a rule or cut by the time budget", ("promote",), flag_only=True),
    Option("--model-name", "registered model name (default registry.model_name, "
           "pneumonia-classifier)", ("promote",), key="registry.model_name"),
    Option("--min-sensitivity", "the decision threshold keeps this sensitivity on validation "
           "(default registry.min_sensitivity)", ("promote",), key="registry.min_sensitivity",
           type=float),
    Option("--model", "registered model URI (default models:/pneumonia-classifier@champion)",
           MODEL_COMMANDS),
    Option("paths", "image files or folders", ("predict", "explain"), nargs="*",
           make="FILES"),
    Option("--data", "labelled folder (NORMAL/ and PNEUMONIA/ inside), or a dataset root "
           "(its test/ split)", ("evaluate",)),
    Option("--data", "folder of the site's images, any layout below it (labels are not read)",
           ("adapt", "site-check")),
    Option("--dicomweb", "DICOMweb root of a PACS, e.g. http://pacs:8042/dicom-web: read the "
           "images from it (credentials: $PNEUMO_EXP_DICOMWEB_USERNAME and _PASSWORD)",
           PACS_COMMANDS),
    Option("--study", "StudyInstanceUID(s) to pull from the PACS, comma-separated",
           PACS_COMMANDS),
    Option("--series", "a SeriesInstanceUID of that study to pull", PACS_COMMANDS),
    Option("--modality", "pull these modalities only, e.g. CR,DX", PACS_COMMANDS),
    Option("--study-date", "pull the studies of a date or range: YYYYMMDD[-YYYYMMDD]",
           PACS_COMMANDS),
    Option("--labels", "CSV of StudyInstanceUID,label (NORMAL/PNEUMONIA or 0/1): the labelled "
           "studies pulled from --dicomweb (all of them, without --study)", ("evaluate",)),
    Option("--out", "folder for the site report, PNG and HTML (default reports/)",
           ("evaluate",), default="reports"),
    Option("--site", "site name; the new version gets the alias site-<name>", ("adapt",)),
    Option("--site", "ARCH=site: promote the best trials of this site's searches; the version "
           "gets the alias site-<name>, never champion or challenger", ("promote",)),
    Option("--site", "site name, for the run and the page (default: the folder's name)",
           ("site-check",)),
    Option("--out", "folder for the site check's page, PNG and HTML (default reports/)",
           ("site-check",), default="reports"),
    Option("--out", "folder for the overlays (default explanations/)", ("explain",),
           default="explanations"),
    Option("--format", "output: table (default), csv or json", ("predict",), default="table",
           choices=("table", "csv", "json")),
    Option("--port", f"port (default {SERVE_PORT})", ("serve",), type=int, default=SERVE_PORT),
    Option("--host", "interface to bind (default 127.0.0.1; 0.0.0.0 serves other machines)",
           ("ui", "server"), default=LOCALHOST),
    Option("--port", f"port (default {UI_PORT})", ("ui", "server"), type=int, default=UI_PORT),
    Option("--backend-store-uri", "runs and registry database: default sqlite under mlruns/, "
           "or e.g. postgresql://user:pw@host/mlflow", ("server",), make="BACKEND"),
    Option("--artifacts-destination", "where the server stores artifacts: default "
           "mlruns/artifacts, or e.g. s3://bucket/mlflow", ("server",), make="ARTIFACTS"),
    Option("--workers", "server processes (default 4, as mlflow server; 1 is enough for one "
           "user or a small machine)", ("server",), type=int, default=4),
    Option("--auth", "require a login: MLflow's basic-auth app, the admin's password from "
           "$PNEUMO_EXP_ADMIN_PASSWORD or --admin-password-file", ("server",), flag_only=True),
    Option("--admin-user", "the server's admin (default admin)", ("server",), default="admin"),
    Option("--admin-password-file", "a file whose first line is the admin's password",
           ("server",)),
    Option("--auth-database", "users and permissions: default sqlite under mlruns/, or e.g. "
           "postgresql://user:pw@host/mlflow_auth", ("server",), make="AUTH_DB"),
    Option("--insecure", "serve a non-loopback HOST without a login (refused otherwise)",
           ("ui", "server"), flag_only=True),
    Option("search_name", "the search's name (pneumo-exp runs lists them)",
           ("delete-search",), make="NAME"),
    Option("--search", "one search (name or parent run id): its trials table", ("runs",),
           make="NAME"),
    Option("--importance", "with --search: which hyperparameters moved its objective "
           "(fANOVA), also logged on its parent run", ("runs",), flag_only=True),
    Option("searches", "searches to compare: names or parent run ids", ("compare",),
           nargs="+", make="SEARCHES"),
    Option("--out", "the comparison plot (default compare.png)", ("compare",),
           default="compare.png"),
    Option("--yes", "do not ask for confirmation", ("delete-search",), flag_only=True),
    Option("--clear", "delete what is kept: images (decoded), pacs (pulled instances) or all "
           "of both; tuner state stays (delete-search)", ("cache",),
           choices=("images", "pacs", "all")),
    Option("--older-than", "with --clear: only what no command used for this many days",
           ("cache",), type=float),
)


def for_command(command: str) -> list[Option]:
    return [o for o in OPTIONS if command in o.commands]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    for o in for_command(command):
        kwargs: dict[str, Any] = {"help": o.help}
        if o.flag_only:
            kwargs["action"] = "store_true"
        elif o.flag == "--set":
            kwargs.update(action="append", default=[], metavar="KEY=VALUE")
        else:
            kwargs.update(type=o.type, default=o.default, nargs=o.nargs, choices=o.choices)
        if o.positional:
            parser.add_argument(o.dest, **kwargs)
        else:
            parser.add_argument(o.flag, dest=o.dest, **kwargs)


def config_overrides(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The options that set configuration keys, as {dotted key: value}."""
    return {o.key: getattr(args, o.dest) for o in for_command(command)
            if o.key and getattr(args, o.dest, None) is not None}


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Named options and --set KEY=VALUE, as dotted configuration keys."""
    return {**config_overrides(args, args.command), **dict(map(parse_override, args.set))}


def argv(args: argparse.Namespace, command: str, skip: Sequence[str] = ()) -> list[str]:
    """The command's options again as command-line arguments (for the processes of a
    distributed search), leaving out `skip`."""
    out: list[str] = []
    for o in for_command(command):
        value = getattr(args, o.dest, None)
        if o.flag not in skip and value is not None and value != o.default:
            out += _arguments(o, value)
    return out


def _arguments(o: Option, value: Any) -> list[str]:
    """One option's value (a list: each item) as command-line arguments."""
    if o.flag_only:
        return [o.flag] if value else []
    items = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return items if o.positional else [word for item in items for word in (o.flag, item)]


SEVERAL = sorted({o.variable for o in OPTIONS if o.nargs in ("*", "+") or o.flag == "--set"})
QUOTING = ("A variable that takes one value (DATA=, NAME=, MODEL=, ...) takes it whole. "
           f"{', '.join(v + '=' for v in SEVERAL)} take several, split as a shell splits words: "
           "quote an item that holds a space inside the variable, FILES='\"scan 1.png\" more/'. "
           "In SET=, a word that does not start with KEY= continues the item before it: "
           "SET=\"registry.views=[original, crop 0.9] train.epochs=5\" is two items.")
SET_ITEM = re.compile(r"\w+(\.\w+)+=")  # the start of a SET item: a dotted key and "="


def _words(variable: str, value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as e:  # an unclosed quote
        raise UserError(f"{variable}={value}: {str(e).lower()}. Quote an item that holds a "
                        "space inside the variable, FILES='\"scan 1.png\" more/' (make vars "
                        "says the rule).") from e


def set_items(words: Sequence[str]) -> list[str]:
    """SET's words as KEY=VALUE items: a word that starts no item continues the last."""
    items: list[str] = []
    for word in words:
        if items and not SET_ITEM.match(word):
            items[-1] += f" {word}"
        else:
            items.append(word)
    return items


def from_make(command: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The arguments a make target passes through its variables (set and not empty), by
    the rule of QUOTING."""
    env = os.environ if environ is None else environ
    out: list[str] = []
    for o in for_command(command):
        value: Any = env.get(o.variable, "").strip()
        if not value:
            continue
        if o.flag_only:
            value = value not in ("0", "false", "no")
        elif o.flag == "--set":
            value = set_items(_words(o.variable, value))
        elif o.nargs in ("*", "+"):
            value = _words(o.variable, value)
        out += _arguments(o, value)
    return out


def make_words(message: str, command: str) -> str:
    """An error message with make variables (EPOCHS=) in place of flags (--epochs)."""
    for o in sorted(for_command(command), key=lambda o: -len(o.flag)):
        if not o.positional:
            variable = f"{o.variable}={'1' if o.flag_only else ''}"
            message = message.replace(f"argument {o.flag}", variable)
            message = message.replace(o.flag, variable)
            message = message.replace(f"{variable} ({variable})", variable)  # "X (--x)"
    return message


def table() -> str:
    """make variable, flag, commands and help of every option (`make vars`)."""
    rows = [(o.variable, o.flag, ", ".join(o.commands), o.help) for o in OPTIONS]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join([*(f"  {a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}"
                        for a, b, c, d in rows), "", textwrap.fill(QUOTING, 100)])
