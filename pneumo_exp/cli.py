"""The `pneumo-exp` command: one entry point, one subcommand per job. Make targets call it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo_exp import interrupts
from pneumo_exp.config import FULL_DATA_DIR, SAMPLE_DIR, load_config, parse_override, tracking_uri
from pneumo_exp.errors import UserError, exit_code
from pneumo_exp.tf_import import import_tensorflow

log = logging.getLogger("pneumo_exp")

UI_HOST, UI_PORT = "127.0.0.1", 5000
SUMMARY = ("val_auc", "val_accuracy", "val_loss", "val_sensitivity", "val_specificity")


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Named options and --set KEY=VALUE, as dotted configuration keys."""
    named = {"data.root": args.data, "data.image_size": args.image_size,
             "search.epochs": args.epochs, "search.batch_size": args.batch_size,
             "search.seed": args.seed,
             "search.max_trials": getattr(args, "max_trials", None),
             "search.tuner": getattr(args, "tuner", None),
             "search.time_budget_min": getattr(args, "time_budget", None)}
    overrides = {k: v for k, v in named.items() if v is not None}
    overrides.update(parse_override(item) for item in args.set)
    return overrides


def cmd_search(args: argparse.Namespace) -> int:
    cfg = load_config(args.arch, _config_overrides(args))
    import_tensorflow()
    from pneumo_exp.search import run_search

    result = run_search(cfg, name=args.name, fresh=args.fresh,
                        verbose=1 if sys.stdout.isatty() else 2)
    m = result.best_metrics
    print()
    if result.best_trial_id is None:
        print(f"Search '{result.name}' of {cfg.arch}: no trial completed "
              f"({result.trials['failed_trials']} failed); see the trial runs in MLflow.")
    else:
        figures = ", ".join(f"{k} {m['best_' + k]:.4f}" for k in SUMMARY if "best_" + k in m)
        print(f"Best trial {result.best_trial_id} of search '{result.name}' ({cfg.arch}, "
              f"{result.trials['completed_trials']} of {result.trials['trials']} trials "
              f"completed): {figures}")
    print(f"MLflow: experiment '{cfg.experiment_name}' (id {result.experiment_id}), parent run "
          f"{result.parent_run_id}; best trial run {result.best_run_id}.")
    print(f"Browse it: make ui, then http://{UI_HOST}:{UI_PORT}/#/experiments/"
          f"{result.experiment_id}/runs/{result.parent_run_id}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    cfg = load_config(args.arch, _config_overrides(args))
    import_tensorflow()
    from pneumo_exp.cv import run_cv

    result = run_cv(cfg, folds=args.folds, source=args.source,
                    verbose=1 if sys.stdout.isatty() else 2)
    m = result.summary
    print()
    print(f"{cfg.arch}, {args.folds}-fold cross-validation of the {args.source} configuration:")
    for name in ("accuracy", "auc", "loss", "sensitivity", "specificity"):
        if f"cv_val_{name}_mean" in m:
            print(f"  validation {name:<12} {m[f'cv_val_{name}_mean']:.4f} "
                  f"± {m[f'cv_val_{name}_std']:.4f}")
    print(f"MLflow: experiment '{cfg.experiment_name}', parent run {result.parent_run_id} "
          f"({m['wall_time_s']:.0f} s).")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    cfg = load_config(args.arch or "aug_cnn", {"registry.model_name": args.model_name}
                      if args.model_name else {})
    import_tensorflow()
    from pneumo_exp.registry import promote

    p = promote(cfg.registry, arch=args.arch, run_id=args.run,
                objective=cfg.search.objective, direction=cfg.search.direction)
    v, name = p.version, cfg.registry.model_name
    aliases = ", ".join(v.aliases) or "none"
    if not p.created:
        print(f"Run {v.tags.get('pneumo.source_run_id')} is already {name} version {v.version} "
              f"(aliases: {aliases}); nothing registered. Champion: version {p.champion}.")
        return 0
    f, t = p.figures, v.tags
    print(f"Registered {name} version {v.version} ({t['pneumo.arch']}, trial run "
          f"{t['pneumo.source_run_id']}); aliases: {aliases}. Champion: version {p.champion}.")
    print(f"  validation: {t['pneumo.objective']} {float(t['pneumo.objective_value']):.4f}; "
          f"threshold {f['test_threshold']:.3f} (highest specificity with validation "
          f"sensitivity >= {cfg.registry.min_sensitivity})")
    print(f"  test, threshold 0.5: accuracy {f['test_accuracy']:.4f} "
          f"[{f['test_accuracy_ci_low']:.3f}, {f['test_accuracy_ci_high']:.3f}], AUC "
          f"{f['test_auc']:.4f} [{f['test_auc_ci_low']:.3f}, {f['test_auc_ci_high']:.3f}], "
          f"sensitivity {f['test_sensitivity']:.4f}, specificity {f['test_specificity']:.4f}")
    print(f"  test, threshold {f['test_threshold']:.3f}: accuracy "
          f"{f['test_accuracy_at_thr']:.4f}, sensitivity {f['test_sensitivity_at_thr']:.4f}, "
          f"specificity {f['test_specificity_at_thr']:.4f}")
    print(f"  evaluation run {t['pneumo.evaluation_run_id']}. Use it: pneumo-exp predict "
          f"--model models:/{name}@champion scan.jpeg")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import_tensorflow()
    from pneumo_exp.inference import image_files, load, predict_files

    files = image_files(args.paths)
    table = predict_files(load(args.model), files)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(json.dumps(table.to_dict(orient="records"), indent=1))
    else:
        for row in table.itertuples():
            print(f"{row.file}\t{row.probability:.6f}\t{row.label}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import_tensorflow()
    from pneumo_exp.inference import evaluate_folder

    f = evaluate_folder(args.model, Path(args.data))
    print(f"{args.model} on {args.data}: accuracy {f['eval_accuracy']:.4f} "
          f"[{f['eval_accuracy_ci_low']:.3f}, {f['eval_accuracy_ci_high']:.3f}], AUC "
          f"{f['eval_auc']:.4f} [{f['eval_auc_ci_low']:.3f}, {f['eval_auc_ci_high']:.3f}], "
          f"sensitivity {f['eval_sensitivity']:.4f}, specificity {f['eval_specificity']:.4f} "
          f"at 0.5; at the model's threshold {f['eval_threshold']:.3f}: accuracy "
          f"{f['eval_accuracy_at_thr']:.4f}, sensitivity {f['eval_sensitivity_at_thr']:.4f}, "
          f"specificity {f['eval_specificity_at_thr']:.4f}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it.")
    os.execv(sys.executable, cmd)
    return 0  # not reached


def cmd_data_sample(args: argparse.Namespace) -> int:
    from pneumo_exp.data.sample import build_sample

    written = build_sample(Path(args.source), Path(args.to), image_size=args.size, seed=args.seed)
    total = sum(a + b for a, b in written.values())
    size_mb = sum(p.stat().st_size for p in Path(args.to).rglob("*") if p.is_file()) / 1e6
    print(f"Wrote {total} images ({size_mb:.1f} MB) to {args.to}: "
          + ", ".join(f"{s} {a}+{b}" for s, (a, b) in written.items()))
    return 0


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


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from pneumo_exp.data.fetch import fetch_dataset

    dest = fetch_dataset(args.source, Path(args.to))
    print(f"Dataset at {dest}. Search it: make search DATA={dest}")
    return 0


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
    search.set_defaults(func=cmd_search)

    cv = sub.add_parser("cv", help="k-fold cross-validation of one configuration, tracked",
                        description="Cross-validate the study's configuration (--from default) "
                        "or the best trial of the latest search (--from best) on the train "
                        "split, in folds grouped by patient.")
    _add_config_options(cv)
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    cv.add_argument("--from", dest="source", choices=["default", "best"], default="default",
                    help="default: the study's configuration; best: the latest search's best")
    cv.set_defaults(func=cmd_cv)

    promote = sub.add_parser("promote", help="register the best validation model, evaluated "
                             "once on test", description="Register the trial with the best "
                             "validation objective (of ARCH, or of all architectures) in the "
                             "MLflow Model Registry, with its preprocessing and a decision "
                             "threshold chosen on validation; evaluate it on the test split.")
    promote.add_argument("arch", nargs="?", help="only this architecture (default: all)")
    promote.add_argument("--run", help="promote this trial run instead of the best one")
    promote.add_argument("--model-name", help="registered model name (default "
                         "pneumonia-classifier)")
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser("predict", help="probability of pneumonia for image files/folders")
    predict.add_argument("--model", required=True,
                         help="model URI, e.g. models:/pneumonia-classifier@champion")
    predict.add_argument("paths", nargs="+", help="image files or folders")
    predict.add_argument("--format", choices=["table", "csv", "json"], default="table",
                         help="output: tab-separated table (default), csv or json")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="evaluate a model on a labelled folder")
    evaluate.add_argument("--model", required=True, help="model URI")
    evaluate.add_argument("--data", required=True, help="folder with NORMAL/ and PNEUMONIA/, "
                          "or a dataset root (its test/ split is used)")
    evaluate.set_defaults(func=cmd_evaluate)

    ui = sub.add_parser("ui", help="serve the MLflow UI of the local store on 127.0.0.1")
    ui.add_argument("--host", default=UI_HOST, help="interface to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=UI_PORT, help="port (default 5000)")
    ui.set_defaults(func=cmd_ui)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sample = data_sub.add_parser("sample", help="build the small bundled sample from a full "
                                 "dataset folder, by whole patients")
    sample.add_argument("--from", dest="source", required=True, help="full dataset folder")
    sample.add_argument("--to", default=str(SAMPLE_DIR), help="output folder (default "
                        "data/sample)")
    sample.add_argument("--size", type=int, default=128, help="image side in pixels")
    sample.add_argument("--seed", type=int, default=0, help="seed of the patient draw")
    sample.set_defaults(func=cmd_data_sample)
    fetch = data_sub.add_parser("fetch", help="download or unpack a dataset archive (zip/tar) "
                                "into the folder layout")
    fetch.add_argument("source", help="http(s) URL or local path of a .zip/.tar[.gz] archive")
    fetch.add_argument("--to", default=str(FULL_DATA_DIR),
                       help="destination folder (default data/chest_xray)")
    fetch.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupts.install()
    if args.debug:
        os.environ["PNEUMO_EXP_DEBUG"] = "1"  # read by pneumo_exp.search
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
