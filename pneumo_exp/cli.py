"""The `pneumo-exp` command: one entry point, one subcommand per job. Make targets call it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pneumo_exp import commands, interrupts
from pneumo_exp.commands import UI_HOST, UI_PORT
from pneumo_exp.config import FULL_DATA_DIR, SAMPLE_DIR
from pneumo_exp.errors import UserError, exit_code

log = logging.getLogger("pneumo_exp")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", nargs="?", default="aug_cnn",
                        help="architecture: the name of a file in experiments/ (default aug_cnn)")
    parser.add_argument("--data", help="dataset folder (ROOT/{train,val,test}/{NORMAL,PNEUMONIA})"
                        " or MedMNIST .npz; default data/chest_xray, else the bundled sample")
    parser.add_argument("--epochs", type=int, help="maximum epochs per trial or fold")
    parser.add_argument("--image-size", type=int, help="images are resized to SIZE x SIZE")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--seed", type=int, help="seed of splits, tuner and training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any configuration key, e.g. --set space.dropout=0.2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo-exp", description="Experiment-tracked hyperparameter search for pneumonia "
        "detection on chest X-rays (Keras Tuner + MLflow).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = sub.add_parser("search", help="search one architecture, tracked in MLflow",
                            description="Run (or resume) a Keras Tuner search configured by "
                            "experiments/ARCH.yaml; every trial is a nested MLflow run.")
    _add_config_options(search)
    search.add_argument("--max-trials", type=int, help="trial budget")
    search.add_argument("--tuner", help="random, bayesian or hyperband")
    search.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="start no trial and no epoch after this many minutes")
    search.add_argument("--name", help="search name; the same name resumes (default: "
                        "<tuner>-<digest of the configuration>)")
    search.add_argument("--fresh", action="store_true",
                        help="discard this search's tuner state and start over")
    search.add_argument("--workers", type=int, default=0,
                        help="run a chief and this many workers on this machine")
    search.add_argument("--role", choices=["chief", "worker"],
                        help="distributed search: this process's role (with --oracle)")
    search.add_argument("--oracle", metavar="HOST:PORT",
                        help="address of the chief's oracle (distributed search)")
    search.add_argument("--worker-id", help="stable id of this worker (default "
                        "worker-<hostname>); a restarted worker resumes its trial")
    search.set_defaults(func=commands.cmd_search)

    cv = sub.add_parser("cv", help="k-fold cross-validation of one configuration, tracked",
                        description="Cross-validate the study's configuration (--from default) "
                        "or the best trial of the latest search (--from best) on the train "
                        "split, in folds grouped by patient.")
    _add_config_options(cv)
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    cv.add_argument("--from", dest="source", choices=["default", "best"], default="default",
                    help="default: the study's configuration; best: the latest search's best")
    cv.set_defaults(func=commands.cmd_cv)

    promote = sub.add_parser("promote", help="register the best validation model, evaluated "
                             "once on test", description="Register the trial with the best "
                             "validation objective (of ARCH, or of all architectures) in the "
                             "MLflow Model Registry, with its preprocessing and a decision "
                             "threshold chosen on validation; evaluate it on the test split.")
    promote.add_argument("arch", nargs="?", help="only this architecture (default: all)")
    promote.add_argument("--run", help="promote this trial run instead of the best one")
    promote.add_argument("--model-name", help="registered model name (default "
                         "pneumonia-classifier)")
    promote.set_defaults(func=commands.cmd_promote)

    predict = sub.add_parser("predict", help="probability of pneumonia for image files/folders")
    predict.add_argument("--model", required=True,
                         help="model URI, e.g. models:/pneumonia-classifier@champion")
    predict.add_argument("paths", nargs="+", help="image files or folders")
    predict.add_argument("--format", choices=["table", "csv", "json"], default="table",
                         help="output: tab-separated table (default), csv or json")
    predict.set_defaults(func=commands.cmd_predict)

    evaluate = sub.add_parser("evaluate", help="evaluate a model on a labelled folder")
    evaluate.add_argument("--model", required=True, help="model URI")
    evaluate.add_argument("--data", required=True, help="folder with NORMAL/ and PNEUMONIA/, "
                          "or a dataset root (its test/ split is used)")
    evaluate.set_defaults(func=commands.cmd_evaluate)

    ui = sub.add_parser("ui", help="serve the MLflow UI of the local store on 127.0.0.1")
    ui.add_argument("--host", default=UI_HOST, help="interface to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=UI_PORT, help="port (default 5000)")
    ui.set_defaults(func=commands.cmd_ui)

    server = sub.add_parser("server", help="MLflow tracking server for a team or a cluster")
    server.add_argument("--host", default=UI_HOST, help="interface to bind (default 127.0.0.1;"
                        " 0.0.0.0 to serve other machines)")
    server.add_argument("--port", type=int, default=UI_PORT, help="port (default 5000)")
    server.add_argument("--backend-store-uri", help="runs and registry database: default "
                        "sqlite under mlruns/, or e.g. postgresql://user:pw@host/mlflow")
    server.add_argument("--artifacts-destination", help="where the server stores artifacts: "
                        "default mlruns/artifacts, or e.g. s3://bucket/mlflow")
    server.add_argument("--workers", type=int, default=4, help="server processes (default 4, "
                        "as mlflow server; 1 is enough for one user or a small machine)")
    server.set_defaults(func=commands.cmd_server)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sample = data_sub.add_parser("sample", help="build the small bundled sample from a full "
                                 "dataset folder, by whole patients")
    sample.add_argument("--from", dest="source", required=True, help="full dataset folder")
    sample.add_argument("--to", default=str(SAMPLE_DIR), help="output folder (default "
                        "data/sample)")
    sample.add_argument("--size", type=int, default=128, help="image side in pixels")
    sample.add_argument("--seed", type=int, default=0, help="seed of the patient draw")
    sample.set_defaults(func=commands.cmd_data_sample)
    fetch = data_sub.add_parser("fetch", help="download or unpack a dataset archive (zip/tar) "
                                "into the folder layout")
    fetch.add_argument("source", help="http(s) URL or local path of a .zip/.tar[.gz] archive")
    fetch.add_argument("--to", default=str(FULL_DATA_DIR),
                       help="destination folder (default data/chest_xray)")
    fetch.set_defaults(func=commands.cmd_data_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupts.install()
    if args.debug:
        os.environ["PNEUMO_EXP_DEBUG"] = "1"  # read by pneumo_exp.tuners
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("mlflow", "alembic", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"pneumo-exp: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("pneumo-exp: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
