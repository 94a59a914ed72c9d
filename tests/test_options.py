"""One table of options: argparse, configuration overrides, the distributed argv and the
make variables all follow from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pneumo_exp.cli import options
from pneumo_exp.cli.main import _with_make_variables, build_parser
from pneumo_exp.config import parse_override

REPO = Path(__file__).resolve().parents[1]


def test_make_variables_become_the_commands_options() -> None:
    env = {"ARCH": "cnn", "MAX_TRIALS": "3", "EPOCHS": "2", "FRESH": "1",
           "SET": "space.dropout=0.2 train.patience=2", "MODEL": "ignored-by-search"}
    argv = ["--make", "search", *options.from_make("search", env)]
    args = build_parser().parse_args(argv)
    assert (args.arch, args.max_trials, args.epochs, args.fresh) == ("cnn", 3, 2, True)
    assert args.set == ["space.dropout=0.2", "train.patience=2"]
    assert options.config_overrides(args, "search") == {
        "train.epochs": 2, "search.max_trials": 3}
    assert not hasattr(args, "model")


@pytest.mark.parametrize("value", [
    "registry.views=[original, crop 0.9] registry.top=1",
    "registry.views='[original, crop 0.9]' registry.top=1",
    "'registry.views=[original, crop 0.9]' registry.top=1",
])
def test_a_set_value_with_spaces_stays_one_item(value: str) -> None:
    args = build_parser().parse_args(["promote", *options.from_make("promote", {"SET": value})])
    assert args.set == ["registry.views=[original, crop 0.9]", "registry.top=1"]
    assert parse_override(args.set[0]) == ("registry.views", ["original", "crop 0.9"])


@pytest.mark.parametrize(("value", "paths"), [
    ('"scan 1.png"', ["scan 1.png"]),
    ("'scan 1.png' more/", ["scan 1.png", "more/"]),
    (r"scan\ 1.png other.png", ["scan 1.png", "other.png"]),
])
def test_a_files_path_with_a_space_is_one_path_when_quoted(value: str, paths: list[str]) -> None:
    args = build_parser().parse_args(["predict", *options.from_make("predict", {"FILES": value})])
    assert args.paths == paths


def test_an_unclosed_quote_in_a_make_variable_is_one_message(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pneumo_exp.cli", "--make", "predict"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "FILES": "'scan 1.png"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "FILES='scan 1.png: no closing quotation" in proc.stderr


def test_argv_rebuilds_what_was_given() -> None:
    given = ["cnn", "--epochs", "2", "--max-trials", "3", "--set", "space.dropout=0.2",
             "--fresh", "--workers", "2", "--name", "x"]
    args = build_parser().parse_args(["search", *given])
    again = options.argv(args, "search", skip=("--workers",))
    assert build_parser().parse_args(["search", *again]).__dict__ == {
        **args.__dict__, "workers": 0}


def test_every_option_is_documented_and_has_a_variable() -> None:
    for o in options.OPTIONS:
        assert o.help and o.variable.isupper() and o.commands
    flags = {(c, o.flag) for o in options.OPTIONS for c in o.commands}
    assert len(flags) == len([(c, o.flag) for o in options.OPTIONS for c in o.commands])


@pytest.mark.parametrize(("command", "env", "needle"), [
    ("predict", {}, "give FILES="),
    ("evaluate", {}, "give DATA=folder to make"),
    ("search", {"EPOCHS": "two"}, "EPOCHS=: invalid int value: 'two'"),
])
def test_make_errors_name_the_variable(tmp_path: Path, command: str, env: dict,
                                       needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pneumo_exp.cli", "--make", command],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert "paths" not in proc.stderr and "--data" not in proc.stderr


def test_make_target_passes_its_variables(tmp_path: Path) -> None:
    """`make -n` shows the recipe; the variables reach pneumo-exp through the environment."""
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "-n", "search", "MAX_TRIALS=2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip().endswith("pneumo-exp --make search")


def test_with_make_variables_leaves_other_calls_alone() -> None:
    assert _with_make_variables(["search", "cnn"]) == (["search", "cnn"], None)
