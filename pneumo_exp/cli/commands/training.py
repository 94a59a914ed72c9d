"""search, cv and the data utilities."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pneumo_exp.cli import options
from pneumo_exp.cli.tf_import import import_tensorflow
from pneumo_exp.config import LOCALHOST, UI_PORT, ExperimentConfig, load_config
from pneumo_exp.errors import ConfigError, UserError
from pneumo_exp.search.distributed import role_from_args, run_local
from pneumo_exp.settings import SITE_ARCH
from pneumo_exp.tracking.store import ui_url

SUMMARY = ("val_auc", "val_accuracy", "val_loss", "val_sensitivity", "val_specificity")


def _keras_verbosity() -> int:
    """Progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def _checked_config(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration with the command line's overrides; the dataset's layout is checked
    before TensorFlow loads, so a wrong folder is reported in a second."""
    from pneumo_exp.data.dataset import check_layout

    cfg = load_config(args.arch, options.overrides(args))
    check_layout(cfg.data)
    return cfg


def cmd_search(args: argparse.Namespace) -> int:
    cfg = _checked_config(args)
    role = role_from_args(args.role, args.oracle, args.worker_id)
    if args.workers:
        if role is not None:
            raise ConfigError("--workers starts its own chief and workers; leave out --role.")
        own = ("--workers", "--role", "--oracle", "--worker-id")  # run_local sets these
        return run_local(options.argv(args, "search", skip=own), args.workers, args.debug)
    import_tensorflow()
    from pneumo_exp.search.run import run_search
    from pneumo_exp.tracking.search_record import format_table

    context: dict[str, Any] = {}
    lineage: dict[str, str] = {}
    if cfg.arch == SITE_ARCH:
        from pneumo_exp.adaptation.site_search import prepare

        cfg, context, lineage = prepare(cfg, args.name)
    result = run_search(cfg, name=args.name, fresh=args.fresh, verbose=_keras_verbosity(),
                        role=role, debug=args.debug, context=context, lineage=lineage)
    if role is not None and not role.is_chief:
        print(f"Worker {role.tuner_id} done: {result.trials['trials']} trials under parent run "
              f"{result.parent_run_id}.")
        return 0
    m = result.best_metrics
    print()
    if result.table:
        print(f"Trials of search '{result.name}' ({cfg.arch}; each trial's best checkpoint on "
              "validation, sensitivity and specificity at 0.5):")
        print(format_table(result.table))
        print()
    if result.best_trial_id is None:
        print(f"Search '{result.name}' of {cfg.arch}: no trial completed "
              f"({result.trials['failed_trials']} failed); see the trial runs in MLflow.")
    else:
        figures = ", ".join(f"{k} {m['best_' + k]:.4f}" for k in SUMMARY if "best_" + k in m)
        print(f"Best: trial {result.best_trial_id} (MLflow run 'trial-{result.best_trial_id}'), "
              f"by {cfg.search.objective}; {result.trials['completed_trials']} of "
              f"{result.trials['trials']} trials completed.")
        print(f"  Validation: {figures}.")
    print(f"MLflow: experiment '{cfg.experiment_name}' (id {result.experiment_id}), parent run "
          f"{result.parent_run_id}; best trial run {result.best_run_id}.")
    print(f"Browse it: make ui, then {ui_url(LOCALHOST, UI_PORT, result.experiment_id)} (its "
          "full-fidelity trials; Views lists the screened ones; 'Override saved view' keeps "
          "the view as this browser's own)")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    cfg = _checked_config(args)
    import_tensorflow()
    from pneumo_exp.search.cv import FIGURES, run_cv

    result = run_cv(cfg, folds=args.folds, source=args.source, verbose=_keras_verbosity())
    m = result.summary
    print()
    print(f"{cfg.arch}, {args.folds}-fold cross-validation of the {args.source} configuration:")
    for name in FIGURES:
        if f"cv_val_{name}_mean" in m:
            print(f"  validation {name:<12} {m[f'cv_val_{name}_mean']:.4f} "
                  f"± {m[f'cv_val_{name}_std']:.4f}")
    print(f"MLflow: experiment '{cfg.experiment_name}', parent run {result.parent_run_id} "
          f"({m['wall_time_s']:.0f} s).")
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    from pneumo_exp.data.sample import build_sample

    written = build_sample(Path(args.source), Path(args.to), image_size=args.size,
                           seed=args.seed)
    total = sum(a + b for a, b in written.values())
    size_mb = sum(p.stat().st_size for p in Path(args.to).rglob("*") if p.is_file()) / 1e6
    print(f"Wrote {total} images ({size_mb:.1f} MB) to {args.to}: "
          + ", ".join(f"{s} {a}+{b}" for s, (a, b) in written.items()))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from pneumo_exp.data.fetch import fetch_dataset

    if not args.source:
        raise UserError("no dataset archive: give SOURCE=url-or-file to make, or the URL or "
                        "file to pneumo-exp data fetch.")
    dest = fetch_dataset(args.source, Path(args.to))
    print(f"Dataset at {dest}. Search it: make search DATA={dest}")
    return 0
