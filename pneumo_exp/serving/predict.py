"""Using a registered model: load it, predict on image files and folders, evaluate it on a
site's labelled cases (a folder, or studies pulled from a PACS) with a one-page report.
Everything goes through the pyfunc model, i.e. exactly what a server runs."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from pneumo_exp.config import CLASS_NAMES, RegistryConfig
from pneumo_exp.data.images import files_fingerprint
from pneumo_exp.data.inputs import LabelledSet
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation.report import (
    SiteReport,
    png_bytes,
    report_figure,
    report_html,
    site_report,
)
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.model import classifier, images_frame
from pneumo_exp.tracking.figures import log_evaluation
from pneumo_exp.tracking.model_uri import PREFIX, registered_version
from pneumo_exp.tracking.names import (
    EVALUATION_EXPERIMENT,
    PREDICTIONS,
    ROLE_EVALUATION,
    SITE_REPORT_HTML,
    SITE_REPORT_PNG,
    TAG_MODEL_URI,
)
from pneumo_exp.tracking.runs import start_run
from pneumo_exp.tracking.store import connect, experiment_id

CHUNK = 256  # files per predict call, to bound memory on large folders


def load(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise UserError(f"cannot load model {model_uri}: {str(e).splitlines()[0]}. List the "
                        "registered models in the MLflow UI (make ui), or run make promote.") from e


def predict_files(model: mlflow.pyfunc.PyFuncModel, files: Sequence[Path],
                  names: Sequence[str] | None = None) -> pd.DataFrame:
    """file (or `names`), probability of PNEUMONIA, label at the model's threshold
    ('unreadable' for files that are not images, 'not a chest radiograph' for DICOM images
    of another kind), the reason for no probability, and the shift check."""
    parts = [model.predict(images_frame(files[i:i + CHUNK])) for i in range(0, len(files), CHUNK)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"probability": [], "label": []})
    for column in ("reason", "check"):  # a version made before them has neither
        if column not in out:
            out[column] = pd.Series([None] * len(out), dtype=object)
    out.insert(0, "file", list(names) if names is not None else [str(f) for f in files])
    return out


@dataclass(frozen=True)
class Evaluation:
    figures: dict[str, float]
    run_id: str
    report: SiteReport
    html: Path  # the site report, written locally too


def evaluate(model_uri: str, labelled: LabelledSet, out: Path,
             n_bootstrap: int = 1000) -> Evaluation:
    """Figures of a registered model on labelled files, logged as an evaluation run with
    its one-page site report (also written to `out`)."""
    model = load(model_uri)
    predictions = predict_files(model, labelled.files)
    readable = predictions["probability"].notna().to_numpy()
    if not readable.any():
        raise DataError(f"none of the {len(labelled.files)} files of {labelled.source} is a "
                        "readable image.")
    client = connect()  # a registered version's tags; none for a model outside the registry
    tags = dict(registered_version(client, model_uri).tags) if model_uri.startswith(PREFIX) else {}
    contract = version_contract(model, tags)
    threshold = contract.threshold
    y, prob = labelled.labels[readable], predictions["probability"].to_numpy(float)[readable]
    target = contract.min_sensitivity or RegistryConfig().min_sensitivity  # or the default
    report = site_report(y, prob, threshold, target, contract.validated_figures(tags))
    title = f"{model_uri} on {labelled.name}"
    with evaluation_run(model_uri, f"evaluate-{labelled.name}",
                        files_fingerprint(labelled.root, labelled.files)) as run:
        mlflow.log_params({"model_uri": model_uri, "data": labelled.source,
                           "files": len(labelled.files),
                           "unreadable_files": int((~readable).sum())})
        mlflow.log_table(predictions, PREDICTIONS)
        figures = log_evaluation(y, prob, threshold, "eval", n_bootstrap)
        counts = {f"eval_{name}_images": float((y == i).sum())
                  for i, name in enumerate(CLASS_NAMES)}
        mlflow.log_metrics(counts)
        png = png_bytes(report_figure(y, prob, report, f"Site report: {title}"))
        page = report_html(report, png, f"Site report: {title}",
                           {"model": model_uri, "data": labelled.source,
                            "evaluation run": run.info.run_id})
        html = keep_page(png, page, (SITE_REPORT_PNG, SITE_REPORT_HTML), out,
                         f"{model_uri.removeprefix('models:/')}-{labelled.name}")
    return Evaluation({**figures, **counts, "eval_unreadable_images": float((~readable).sum())},
                      run.info.run_id, report, html)


def evaluation_run(model_uri: str, run_name: str, fingerprint: str) -> mlflow.ActiveRun:
    """A run of the evaluation experiment judging `model_uri` on the images of `fingerprint`."""
    return start_run(experiment_id(connect(), EVALUATION_EXPERIMENT), run_name,
                     ROLE_EVALUATION, fingerprint, {TAG_MODEL_URI: model_uri})


def keep_page(png: bytes, page: str, artifacts: tuple[str, str], out: Path,
              name: str) -> Path:
    """A one-page report into the active run (`artifacts`: its PNG and HTML paths) and into
    the folder `out` as <name>.png and .html; the HTML's path."""
    png_artifact, html_artifact = artifacts
    mlflow.log_text(page, html_artifact)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / Path(png_artifact).name).write_bytes(png)
        mlflow.log_artifact(str(Path(tmp) / Path(png_artifact).name),
                            str(Path(png_artifact).parent))
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    (out / f"{stem}.png").write_bytes(png)
    (out / f"{stem}.html").write_text(page)
    return out / f"{stem}.html"


def version_contract(model: mlflow.pyfunc.PyFuncModel, tags: Mapping[str, str]
                     ) -> VersionContract:
    """The contract of a loaded version (serving/contract.py), its arrays included; its
    registry `tags` complete that of a version registered before the contract."""
    return VersionContract.from_dict(model.model_config, tags,
                                     getattr(classifier(model), "artifacts", None))
