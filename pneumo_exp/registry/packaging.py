"""The one producer of a registered version (docs/architecture.md, "A promotion"): a pyfunc
model logged from code, no pickle, with a snapshot of the package's code, so that the
version loads as it was made."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import pneumo_exp
from pneumo_exp.serving.batch_norm import batch_norm_layers
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.model import MODEL_CODE, member_artifact, signature
from pneumo_exp.tracking.names import PACKAGED_MODEL

# The third-party modules the version's code snapshot (the whole package) imports:
# tests/test_packaging.py holds this to the package's imports.
SNAPSHOT_IMPORTS = ("PIL", "dicomweb_client", "grpc", "keras", "keras_tuner", "matplotlib",
                    "mlflow", "numpy", "optuna", "packaging", "pandas", "pydantic", "pydicom",
                    "requests", "scipy", "sklearn", "tensorflow", "yaml")
PIXEL_PLUGINS = "pixeldata"  # pydicom's extra of its decoders under permissive licences


def pixel_plugins() -> list[str]:
    """The distributions of pydicom's pixel-data plugins (its `pixeldata` extra, which
    leaves out the GPL one) installed here: what decodes a compressed DICOM object."""
    installed = {canonicalize_name(d.name) for d in metadata.distributions() if d.name}

    def extra(name: str, extras: set[str]) -> list[Requirement]:
        """What `name[extras]` adds, of what is installed (pylibjpeg[rle]: pylibjpeg-rle)."""
        return [r for r in map(Requirement, metadata.requires(name) or [])
                if r.marker and any(r.marker.evaluate({"extra": e}) for e in extras)
                and canonicalize_name(r.name) in installed]

    return [n for plugin in extra("pydicom", {PIXEL_PLUGINS})
            for n in (plugin.name, *(r.name for r in extra(plugin.name, plugin.extras)))]


def pip_requirements() -> list[str]:
    """A version's requirements, at the versions that made it: the distributions of every
    module its code snapshot imports, and the pixel plugins."""
    providers = metadata.packages_distributions()
    names = [*(d for m in SNAPSHOT_IMPORTS for d in providers[m]), *pixel_plugins()]
    return sorted({f"{canonicalize_name(n)}=={metadata.version(n)}" for n in names})


def write_version(name: str, contract: VersionContract, models: Sequence[Any],
                  lineage: Mapping[str, str]) -> ModelVersion:
    """Into the active run: the Keras `models` (one per member of `contract`, in order) and
    the contract as one pyfunc model; then a new version of `name`, tagged with `lineage`
    and the contract's tags. A contract lacking what the checks read is refused first."""
    if len(models) != len(contract.members):
        raise ValueError(f"{len(models)} networks for a contract of "
                         f"{len(contract.members)} members")
    lacking = contract.missing(adaptable=all(batch_norm_layers(m) for m in models))
    if lacking:
        raise ValueError(f"a version of {name} must carry its checks and this one lacks "
                         f"{', '.join(lacking)}: nothing registered")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        artifacts = {}
        for i, model in enumerate(models):
            path = Path(tmp) / f"member_{i}.keras"
            model.save(path)
            artifacts[member_artifact(i)] = str(path)
        artifacts.update(contract.artifact_files(Path(tmp)))
        logged = mlflow.pyfunc.log_model(
            name=PACKAGED_MODEL, python_model=str(MODEL_CODE), artifacts=artifacts,
            code_paths=[str(Path(pneumo_exp.__file__).parent)],
            model_config=contract.to_dict(), signature=signature(),
            pip_requirements=pip_requirements())
    return mlflow.register_model(logged.model_uri, name,
                                 tags={**lineage, **contract.tags()})
