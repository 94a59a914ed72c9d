"""The one writer of a version: it refuses one without its checks (whom it is for, its
views, validation's features as registered, and as adapted when its members can be
adapted); and what the version needs where pneumo-exp is not installed: its requirements
name every distribution its code snapshot (the whole package) imports, pinned at the
versions that made it, and pydicom's pixel plugins; and pyproject.toml declares every
import."""

from __future__ import annotations

import ast
import dataclasses
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import keras
import mlflow
import pytest
import yaml
from conftest import checked_contract, tiny_base
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pneumo_exp.registry.packaging import SNAPSHOT_IMPORTS, pixel_plugins, write_version
from pneumo_exp.tracking.store import connect

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pneumo_exp"


def imports(root: Path) -> set[str]:
    """The third-party top-level modules the package's files import, anywhere in them."""
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", root.name}


def providers(module: str) -> set[str]:
    return {canonicalize_name(d) for d in metadata.packages_distributions().get(module, [])}


def test_the_snapshot_imports_are_listed() -> None:
    assert imports(PACKAGE) == set(SNAPSHOT_IMPORTS), (
        "registry/packaging.py's SNAPSHOT_IMPORTS must name the package's imports: a version "
        "requires their distributions")


def test_the_import_scan_sees_an_import(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "m.py").write_text(
        "import os\nimport scipy.stats\nfrom . import x\nfrom pkg.y import z\n\n"
        "def f():\n    from pydicom.pixels import decoders\n")
    assert imports(tmp_path / "pkg") == {"scipy", "pydicom"}


def test_pyproject_declares_every_import() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    builds = [*project["optional-dependencies"]["cpu"], *project["optional-dependencies"]["gpu"]]
    declared = {canonicalize_name(Requirement(r).name) for r in [*project["dependencies"],
                                                                 *builds]}
    undeclared = {m for m in imports(PACKAGE) if not providers(m) & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def test_a_version_requires_what_its_snapshot_imports(workdir: Path) -> None:
    connect()
    inputs = keras.Input((16, 16, 1))
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    with mlflow.start_run():
        version = write_version("reuse", checked_contract([model], 16), [model], {})
    folder = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(workdir)))
    pinned = {canonicalize_name(Requirement(line).name): Requirement(line).specifier
              for line in (folder / "requirements.txt").read_text().split("\n")
              if line.strip() and not line.startswith("-")}
    for module in imports(PACKAGE):
        names = providers(module) & set(pinned)
        assert names, f"{module} is imported by the snapshot but not required"
        assert all(metadata.version(n) in pinned[n] for n in names), (module, pinned)
    for plugin in pixel_plugins():
        assert metadata.version(plugin) in pinned[canonicalize_name(plugin)]
    assert {"pydicom", "pylibjpeg-openjpeg", "pylibjpeg-rle"} <= set(pinned)
    assert "pylibjpeg-libjpeg" not in pinned  # GPL: pydicom's gpl-license extra, not required
    env = yaml.safe_load((folder / "python_env.yaml").read_text())
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["dependencies"] == ["-r requirements.txt"]


@pytest.mark.skipif(not any(d.metadata["Name"] == "python-gdcm"
                            for d in metadata.distributions()), reason="python-gdcm absent")
def test_gdcm_is_a_pixel_plugin_where_installed() -> None:
    assert "python-gdcm" in pixel_plugins()


@pytest.mark.parametrize(("lacking", "says"), [
    ("population", "a population"), ("views", "views"),
    ("features", "the feature reference"),
    ("features_adapted", "the adapted feature reference")])
def test_a_version_without_its_checks_is_not_written(workdir: Path, lacking: str,
                                                     says: str) -> None:
    client = connect()
    keras.utils.set_random_seed(0)
    model = tiny_base(32)  # batch-normalized: it can be adapted to validation's 40 images
    whole = checked_contract([model], 32)
    with mlflow.start_run():
        with pytest.raises(ValueError, match=f"lacks {says}: nothing registered"):
            write_version("v", dataclasses.replace(whole, **{lacking: None if lacking != "views"
                                                             else ()}), [model], {})
        assert not client.search_model_versions("name = 'v'")
        write_version("v", whole, [model], {})
    assert len(client.search_model_versions("name = 'v'")) == 1
