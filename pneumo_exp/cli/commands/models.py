"""Registered models: promote, adapt, predict, evaluate, explain, serve, and the listing.
predict, evaluate and adapt read files and folders, or studies pulled from a PACS."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pneumo_exp.cli import options
from pneumo_exp.cli.processes import run_server
from pneumo_exp.cli.tf_import import import_tensorflow
from pneumo_exp.config import LOCALHOST, load_config, tracking_uri
from pneumo_exp.data.dicomweb import PacsQuery, comma_list
from pneumo_exp.data.images import OUTSIDE, REFUSED, UNREADABLE
from pneumo_exp.data.inputs import (
    Images,
    LabelledSet,
    image_inputs,
    labelled_folder,
    labelled_pacs,
    site_images,
)
from pneumo_exp.errors import UserError
from pneumo_exp.settings import SITE_ARCH
from pneumo_exp.tracking.listing import describe_version, models_table
from pneumo_exp.tracking.names import (
    CHAMPION,
    OUT_OF_FOLD,
    TAG_ARCH,
    TAG_BASE_VERSION,
    TAG_EVALUATION_RUN,
    TAG_MEMBERS,
    TAG_OBJECTIVE,
    TAG_OBJECTIVE_VALUE,
    TAG_SITE,
    TAG_SOURCES,
    TAG_TEMPERATURE,
    TAG_THRESHOLD,
    TRAINING_SITE,
    figure_tag,
    site_alias,
)
from pneumo_exp.tracking.store import connect


def _model_uri(args: argparse.Namespace) -> str:
    """--model (MODEL=), else the champion of the configured registered model."""
    return args.model or f"models:/{load_config('aug_cnn').registry.model_name}@{CHAMPION}"


def _need(value: object, what: str, flag: str, variable: str, example: str) -> None:
    if not value:
        raise UserError(f"{what}: give {variable}={example} to make, or {flag} {example} to "
                        "pneumo-exp.")


def _use_it(args: argparse.Namespace, uri: str) -> str:
    """How to predict with the new version, in the words the user ran the command with."""
    if getattr(args, "make", False):
        return f"Use it: make predict MODEL={uri} FILES=scan.jpeg"
    return f"Use it: pneumo-exp predict --model {uri} scan.jpeg"


def _ci(f: dict[str, float], key: str, digits: int = 4) -> str:
    """A figure and its 95% interval: "0.9123 [0.901, 0.930]"."""
    return f"{f[key]:.{digits}f} [{f[key + '_ci_low']:.3f}, {f[key + '_ci_high']:.3f}]"


def cmd_promote(args: argparse.Namespace) -> int:
    cfg = load_config(args.arch or "aug_cnn", options.overrides(args))
    import_tensorflow()
    from pneumo_exp.registry.promote import promote

    arch = args.arch or (SITE_ARCH if args.site else None)
    p = promote(cfg.registry, arch=arch, run_id=args.run, top=args.top,
                any_trial=args.any_trial, search=args.search, site=args.site)
    if p.why:
        print(f"Members: {p.why}.")
    v, name = p.version, cfg.registry.model_name
    aliases = ", ".join(v.aliases) or "none"
    sources = v.tags.get(TAG_SOURCES, "")
    if not p.created:
        print(f"Trial run(s) {sources} are already {name} version {v.version} (aliases: "
              f"{aliases}); nothing registered. Champion: version {p.champion}.")
        return 0
    f, t, views = p.figures, v.tags, len(cfg.registry.views)
    if p.site is not None:
        return _site_promoted(args, p, name)
    members = int(t.get(TAG_MEMBERS, "1"))
    what = (f"{t[TAG_ARCH]}, trial run {sources}" if members == 1
            else f"ensemble of {members} trials of {t[TAG_ARCH]}: {sources}")
    print(f"Registered {name} version {v.version} ({what}); aliases: {aliases}. "
          f"Champion: version {p.champion}.")
    print(f"  validation: {t[TAG_OBJECTIVE]} {float(t[TAG_OBJECTIVE_VALUE]):.4f}; "
          f"temperature {float(t[TAG_TEMPERATURE]):.3f} (calibration error "
          f"{t[figure_tag('val_uncalibrated_ece')]} -> {t[figure_tag('val_ece')]}); threshold "
          f"{f['test_threshold']:.3f} (highest specificity with validation sensitivity >= "
          f"{cfg.registry.min_sensitivity}"
          f"{f', each image the mean of {views} views' if views > 1 else ''})")
    print(f"  test, threshold 0.5: accuracy {_ci(f, 'test_accuracy')}, AUC "
          f"{_ci(f, 'test_auc')}, sensitivity {f['test_sensitivity']:.4f}, specificity "
          f"{f['test_specificity']:.4f}")
    print(f"  test, threshold {f['test_threshold']:.3f}: accuracy "
          f"{_ci(f, 'test_accuracy_at_thr')}, sensitivity {f['test_sensitivity_at_thr']:.4f}, "
          f"specificity {f['test_specificity_at_thr']:.4f}; calibration error "
          f"{f['test_ece']:.3f}")
    print(f"  evaluation run {t[TAG_EVALUATION_RUN]}. "
          f"{_use_it(args, f'models:/{name}/{v.version}')}")
    return 0


def _site_promoted(args: argparse.Namespace, p: Any, name: str) -> int:
    """What a site version's promotion prints: its figures on both sites."""
    v, f = p.version, p.figures
    print(f"Registered {name} version {v.version}: site {v.tags.get(TAG_SITE)}'s version of "
          f"{v.tags.get(TAG_BASE_VERSION)} ({v.tags.get(TAG_MEMBERS, '1')} trial(s)); alias "
          f"{site_alias(p.site)}. Champion: version {p.champion} (unchanged).")
    print(f"  the site's validation: AUC {f['val_auc']:.4f}; at the threshold "
          f"{float(v.tags[TAG_THRESHOLD]):.3f}: sensitivity {f['val_sensitivity_at_thr']:.4f}, "
          f"specificity {f['val_specificity_at_thr']:.4f}")
    t = TRAINING_SITE
    if f"{t}auc" in f:
        print(f"  the training hospital's validation: AUC {f[t + 'auc']:.4f} (its base's "
              f"{f[t + 'base_auc']:.4f}); sensitivity {f[t + 'sensitivity_at_thr']:.4f}, "
              f"specificity {f[t + 'specificity_at_thr']:.4f}")
    o = OUT_OF_FOLD
    print(f"  threshold chosen on all {int(f[o + 'images'])} of the site's labelled images out "
          f"of fold ({int(f[o + 'folds'])} folds by patient): " + ", ".join(
              f"{k} {_ci(f, f'{o}{k}_at_thr', 3)}" for k in ("sensitivity", "specificity")))
    print(f"  {_use_it(args, f'models:/{name}@{site_alias(p.site)}')}")
    return 0


def _pacs(args: argparse.Namespace) -> PacsQuery | None:
    """The PACS query of --dicomweb and its options, if given."""
    if not args.dicomweb:
        return None
    return PacsQuery(args.dicomweb, comma_list(args.study), args.series,
                     comma_list(args.modality), args.study_date)


def _site_images(args: argparse.Namespace) -> Images:
    """A site's unlabeled images: the folder --data, or a PACS."""
    if not args.dicomweb:
        _need(args.data, "no folder of the site's images", "--data", "DATA", "folder")
    return site_images(args.data, _pacs(args))


def cmd_adapt(args: argparse.Namespace) -> int:
    _need(args.site, "no site name", "--site", "SITE", "name")
    images = _site_images(args)
    source = images.source
    import_tensorflow()
    from pneumo_exp.adaptation.site import adapt

    a = adapt(_model_uri(args), images.files, images.root, source, args.site)
    v = a.version
    print(f"Registered {v.name} version {v.version}: version {a.source.version} adapted to "
          f"site '{args.site}' on {a.images} images of {source}"
          f"{f' ({a.skipped} unreadable files skipped)' if a.skipped else ''}; {a.layers} "
          f"batch-normalization layers re-estimated. Alias: {site_alias(args.site)}.")
    print(f"  {_use_it(args, f'models:/{v.name}@{site_alias(args.site)}')}")
    return 0


def cmd_site_check(args: argparse.Namespace) -> int:
    images = _site_images(args)
    import_tensorflow()
    from pneumo_exp.adaptation.site_check import run_site_check

    uri = _model_uri(args)
    name = args.site or ("pacs" if args.dicomweb else Path(args.data).resolve().name)
    check, page, run_id = run_site_check(uri, images.files, images.root, images.source, name,
                                         Path(args.out))
    print(f"{describe_version(uri)} on {images.source}: {check.images} images read"
          f"{f', {check.skipped} skipped' if check.skipped else ''}; no label read.")
    for what, look in check.looks.items():
        print(f"  {what}: a classifier tells them from validation's at AUC {look.auc:.3f} "
              f"(MMD p = {look.mmd.p_value:.3f}); {look.flagged_share:.1%} of the images "
              "beyond all but 1% of validation's")
    print(f"  scores: {check.positive_share:.1%} called PNEUMONIA (validation "
          f"{check.validation.get('positive_share', float('nan')):.1%}), KS {check.ks:.3f} "
          "against validation's (they move with prevalence: they do not decide)")
    print(f"  page: {page} (and in evaluation run {run_id}). Verdict: {check.verdict}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.dicomweb:
        _need(args.paths, "no image files or folders to predict", "", "FILES", "'a.jpeg dir/'")
    images = image_inputs(args.paths, _pacs(args))
    import_tensorflow()
    from pneumo_exp.serving.predict import load, predict_files

    uri = _model_uri(args)
    table = predict_files(load(uri), images.files, images.names)
    if args.format != "table":  # csv or json
        print(table.to_csv(index=False).removesuffix("\n") if args.format == "csv"
              else json.dumps(table.to_dict(orient="records"), indent=1))
        return 0
    print(f"# {describe_version(uri)}")
    print("file\tprobability of PNEUMONIA\tlabel\tnote")
    for row in table.itertuples():
        p = "-" if row.probability is None else f"{row.probability:.6f}"
        print(f"{row.file}\t{p}\t{row.label}\t{row.reason or row.check or ''}")
    counts = table["label"].value_counts()
    flagged = int(table["check"].notna().sum())
    print(f"# {len(table)} files: " + ", ".join(f"{counts.get(label, 0)} {label}" for label in
                                              ("NORMAL", "PNEUMONIA", UNREADABLE, REFUSED,
                                               OUTSIDE))
          + (f"; {flagged} flagged (see the note)" if flagged else ""))
    return 0


def _labelled(args: argparse.Namespace) -> LabelledSet:
    """A labelled folder, or the labelled studies of a PACS (labels from a CSV)."""
    query = _pacs(args)
    if query is None:
        _need(args.data, "no labelled folder to evaluate on", "--data", "DATA", "folder")
        return labelled_folder(Path(args.data))
    _need(args.labels, "no labels for the PACS studies", "--labels", "LABELS", "labels.csv")
    return labelled_pacs(query, Path(args.labels))


def cmd_evaluate(args: argparse.Namespace) -> int:
    labelled_set = _labelled(args)
    import_tensorflow()
    from pneumo_exp.registry.model_card import add_site_evaluation
    from pneumo_exp.serving.predict import evaluate

    uri = _model_uri(args)
    e = evaluate(uri, labelled_set, Path(args.out))
    f = e.figures
    add_site_evaluation(connect(), uri, labelled_set.source, e.report, e.run_id)
    unreadable = f", {f['eval_unreadable_images']:.0f} unreadable left out" if f[
        "eval_unreadable_images"] else ""
    print(f"{describe_version(uri)} on {labelled_set.source} "
          f"({f['eval_NORMAL_images']:.0f} NORMAL, {f['eval_PNEUMONIA_images']:.0f} PNEUMONIA"
          f"{unreadable}):")
    print(f"  threshold 0.5: accuracy {_ci(f, 'eval_accuracy')}, AUC {_ci(f, 'eval_auc')}, "
          f"sensitivity {f['eval_sensitivity']:.4f}, specificity {f['eval_specificity']:.4f}")
    print(f"  the model's threshold {f['eval_threshold']:.3f}: accuracy "
          f"{f['eval_accuracy_at_thr']:.4f}, sensitivity {f['eval_sensitivity_at_thr']:.4f}, "
          f"specificity {f['eval_specificity_at_thr']:.4f}; calibration error "
          f"{f['eval_ece']:.3f}, Brier {f['eval_brier']:.3f}")
    print(f"  site report: {e.html} (and in evaluation run {e.run_id}). Verdict: "
          f"{e.report.verdict}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    _need(args.paths, "no image files or folders to explain", "", "FILES", "'a.jpeg dir/'")
    import_tensorflow()
    from pneumo_exp.explain.gradcam import explain_files
    from pneumo_exp.serving.model import classifier
    from pneumo_exp.serving.predict import load

    uri = _model_uri(args)
    written = explain_files(classifier(load(uri)), uri, args.paths, Path(args.out))
    print(f"{describe_version(uri)}: {len(written)} Grad-CAM overlays in {args.out}/")
    for path, text in written:
        print(f"  {path}  {text}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`mlflow models serve` of a registered version on 127.0.0.1, stopped as one group."""
    connect()
    uri = _model_uri(args)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"Serving {uri} on http://{LOCALHOST}:{args.port}/invocations. Ctrl-C, or kill this "
          "process (or the make that started it), stops it and its workers.", flush=True)
    return run_server([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                       "--env-manager", "local", "-h", LOCALHOST, "-p", str(args.port)], env)


def cmd_models(args: argparse.Namespace) -> int:
    print(models_table(connect()))
    return 0
