"""The package's folders are the pipeline, and no module imports from a later stage."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pneumo_exp"

# The stages, each importing only from itself and the stages before it: the foundation
# (config, errors, fileio, text), then data in, models, figures, Grad-CAM, MLflow, the
# search, a registered version in use, its promotion, its adaptation, and the command line.
STAGES = ("", "data", "hypermodels", "evaluation", "explain", "tracking", "search",
          "serving", "registry", "adaptation", "cli")


def _stage(module: str) -> str:
    """pneumo_exp.search.run -> search; pneumo_exp.config -> '' (the foundation)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("pneumo_exp.")}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return out


def test_every_module_belongs_to_a_stage() -> None:
    for module, path in _modules():
        parts = module.split(".")
        if len(parts) > 2 or (path.name == "__init__.py" and len(parts) == 2):
            assert parts[1] in STAGES, f"{path}: folder {parts[1]} is not a stage"


def test_no_module_imports_from_a_later_stage() -> None:
    late = []
    for module, path in _modules():
        if module == "pneumo_exp":  # the package's front door (use_project_store)
            continue
        mine = STAGES.index(_stage(module))
        for imported in _imports(path):
            theirs = STAGES.index(_stage(imported))
            if theirs > mine:
                late.append(f"{module} imports {imported}")
    assert not late, "imports from a later stage:\n" + "\n".join(late)


def test_the_checker_sees_a_late_import(tmp_path: Path) -> None:
    """The rule above is not vacuous: an import of serving from data is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pneumo_exp.serving.model import Member\n")
    imported = _imports(bad)
    assert imported == {"pneumo_exp.serving.model"}
    assert STAGES.index(_stage("pneumo_exp.serving.model")) > STAGES.index(
        _stage("pneumo_exp.data.images"))


def test_command_line_and_tracking_load_no_tensorflow() -> None:
    modules = ("pneumo_exp.cli", "pneumo_exp.cli.commands", "pneumo_exp.tracking.store",
               "pneumo_exp.tracking.listing", "pneumo_exp.tracking.search_record",
               "pneumo_exp.tracking.search_tracker")
    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "[]"


# Calls that write a registered version: only its producer makes them.
VERSION_WRITERS = {"register_model", "create_model_version"}
PRODUCER = PACKAGE / "registry" / "packaging.py"


def _version_writes(path: Path) -> list[str]:
    """The calls in `path` that write a version: register_model, create_model_version, or
    a pyfunc model logged (mlflow.pyfunc.log_model)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            pyfunc = isinstance(owner, ast.Attribute) and owner.attr == "pyfunc"
            if name in VERSION_WRITERS or (name == "log_model" and pyfunc):
                found.append(f"{path}:{node.lineno} {name}")
    return found


def test_only_the_contracts_producer_writes_a_version() -> None:
    writes = [w for _, path in _modules() if path != PRODUCER for w in _version_writes(path)]
    assert not writes, ("a version is written through registry/packaging.py's write_version "
                        "only:\n" + "\n".join(writes))
    assert _version_writes(PRODUCER), "the producer writes no version: the rule checks nothing"


def test_the_writer_rule_sees_a_write(tmp_path: Path) -> None:
    bad = tmp_path / "writer.py"
    bad.write_text("import mlflow\nmlflow.register_model('runs:/x/m', 'name')\n"
                   "mlflow.pyfunc.log_model(name='m')\nmlflow.keras.log_model(m, name='m')\n")
    assert len(_version_writes(bad)) == 2  # a trial's Keras model is no version


def test_no_module_is_longer_than_450_lines() -> None:
    long = [f"{path.relative_to(PACKAGE.parent)}: {n}" for _, path in _modules()
            if (n := len(path.read_text().splitlines())) > 450]
    assert not long, "split these modules:\n" + "\n".join(long)
