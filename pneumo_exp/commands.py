"""What each `pneumo-exp` subcommand does with its parsed arguments (cli.py parses them).
Heavy imports (TensorFlow, MLflow) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pneumo_exp.config import (
    MLRUNS_DIR,
    ExperimentConfig,
    load_config,
    parse_override,
    tracking_uri,
)
from pneumo_exp.distributed import role_from_args, run_local
from pneumo_exp.errors import ConfigError
from pneumo_exp.tf_import import import_tensorflow

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


def _keras_verbosity() -> int:
    """Progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def _search_argv(args: argparse.Namespace) -> list[str]:
    """The search's own options again, for the chief and workers `--workers` starts."""
    argv = [args.arch]
    for flag, value in (("--data", args.data), ("--epochs", args.epochs),
                        ("--image-size", args.image_size), ("--batch-size", args.batch_size),
                        ("--seed", args.seed), ("--max-trials", args.max_trials),
                        ("--tuner", args.tuner), ("--time-budget", args.time_budget),
                        ("--name", args.name)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.set:
        argv += ["--set", item]
    return argv + (["--fresh"] if args.fresh else [])


def _checked_config(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration with the command line's overrides; the dataset's layout is checked
    before TensorFlow loads, so a wrong folder is reported in a second."""
    from pneumo_exp.data.dataset import check_layout

    cfg = load_config(args.arch, _config_overrides(args))
    check_layout(cfg.data)
    return cfg


def cmd_search(args: argparse.Namespace) -> int:
    cfg = _checked_config(args)
    role = role_from_args(args.role, args.oracle, args.worker_id)
    if args.workers:
        if role is not None:
            raise ConfigError("--workers starts its own chief and workers; leave out --role.")
        return run_local(_search_argv(args), args.workers)
    import_tensorflow()
    from pneumo_exp.search import run_search

    result = run_search(cfg, name=args.name, fresh=args.fresh,
                        verbose=_keras_verbosity(), role=role)
    if role is not None and not role.is_chief:
        print(f"Worker {role.tuner_id} done: {result.trials['trials']} trials under parent run "
              f"{result.parent_run_id}.")
        return 0
    m = result.best_metrics
    print()
    if result.best_trial_id is None:
        print(f"Search '{result.name}' of {cfg.arch}: no trial completed "
              f"({result.trials['failed_trials']} failed); see the trial runs in MLflow.")
    else:
        figures = ", ".join(f"{k} {m['best_' + k]:.4f}" for k in SUMMARY if "best_" + k in m)
        print(f"Best trial {result.best_trial_id} of search '{result.name}' ({cfg.arch}, "
              f"{result.trials['completed_trials']} of {result.trials['trials']} trials "
              f"completed; MLflow run 'trial-{result.best_trial_id}', ids from 0).")
        print(f"  Its best checkpoint on validation: {figures}.")
        print("  (exact figures from scikit-learn; the tuner's val_auc above is Keras' estimate "
              "over 200 thresholds)")
    print(f"MLflow: experiment '{cfg.experiment_name}' (id {result.experiment_id}), parent run "
          f"{result.parent_run_id}; best trial run {result.best_run_id}.")
    print(f"Browse it: make ui, then http://{UI_HOST}:{UI_PORT}/#/experiments/"
          f"{result.experiment_id}/runs/{result.parent_run_id}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    cfg = _checked_config(args)
    import_tensorflow()
    from pneumo_exp.cv import run_cv

    result = run_cv(cfg, folds=args.folds, source=args.source,
                    verbose=_keras_verbosity())
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


def cmd_server(args: argparse.Namespace) -> int:
    """`mlflow server`: a tracking server and Model Registry that a team and the workers of a
    distributed search share (MLFLOW_TRACKING_URI=http://HOST:PORT on every machine)."""
    backend = args.backend_store_uri or f"sqlite:///{MLRUNS_DIR.resolve() / 'mlflow.db'}"
    if backend.startswith("sqlite:///"):
        from pneumo_exp.tracking import init_sqlite_store
        init_sqlite_store(Path(backend.removeprefix("sqlite:///")))
    artifacts = args.artifacts_destination or str((MLRUNS_DIR / "artifacts").resolve())
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", artifacts, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    print(f"MLflow tracking server on http://{args.host}:{args.port} (backend {backend}, "
          f"artifacts {artifacts}). Clients: MLFLOW_TRACKING_URI=http://{args.host}:{args.port}")
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


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from pneumo_exp.data.fetch import fetch_dataset

    dest = fetch_dataset(args.source, Path(args.to))
    print(f"Dataset at {dest}. Search it: make search DATA={dest}")
    return 0
