"""The README's Python example works as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumo_exp.config import RegistryConfig
from pneumo_exp.registry.promote import promote

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (example,) = [b for b in blocks if "use_project_store" in b]  # from the repository
    return example


def test_readme_python_example_runs_as_printed(searched: dict[str, Any]) -> None:
    root = searched["root"]
    promote(RegistryConfig(model_name="pneumonia-classifier"), arch="aug_cnn")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 250), np.uint8)).save(
        root / "scan.jpeg")
    before = set(root.iterdir())
    proc = subprocess.run([sys.executable, "-c", _python_example() + "\nprint(answer.to_string())"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "probability" in proc.stdout and ("NORMAL" in proc.stdout or
                                             "PNEUMONIA" in proc.stdout)
    assert set(root.iterdir()) == before  # no stray mlflow.db or mlruns/ elsewhere
