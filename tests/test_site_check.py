"""The site check's verdicts on real X-rays: a version searched and promoted on the bundled
sample, checked on the sample's own test images, on copies of them made worse, and on
another hospital's adults (../shared/data/external/nih, when it is there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pneumo_exp.config import SAMPLE_DIR

pytestmark = pytest.mark.slow  # a search and a promotion of the sample (about 3 minutes)

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "nih"


@pytest.fixture(scope="module")
def sample_version(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pneumo_exp.cli import main

    root = tmp_path_factory.mktemp("sample_version")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["search", "aug_cnn", "--data", str(SAMPLE_DIR)]) == 0
        assert main(["promote", "aug_cnn"]) == 0
    return {"root": root}


def _verdict(root: Path, folder: Path, capsys: pytest.CaptureFixture,
             monkeypatch: pytest.MonkeyPatch) -> str:
    from pneumo_exp.cli import main

    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["site-check", "--data", str(folder), "--out", str(root / "reports")]) == 0
    line = capsys.readouterr().out.split("Verdict: ", 1)[1]
    return line.split(":", 1)[0]


def test_the_training_hospitals_own_images_are_not_another_population(
        sample_version: dict[str, Any], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = _verdict(sample_version["root"], SAMPLE_DIR / "test", capsys, monkeypatch)
    assert verdict in ("like the training site", "shifted")


def test_copies_made_worse_are_at_least_shifted(sample_version: dict[str, Any],
                                                capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for kind in ("inverted", "noisy"):
        folder = tmp_path / kind
        folder.mkdir()
        for f in sorted((SAMPLE_DIR / "test").rglob("*.png"))[::2]:
            a = np.asarray(Image.open(f).convert("L"), dtype=np.float64)
            a = 255 - a if kind == "inverted" else a + rng.normal(0, 25, a.shape)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(folder / f.name)
        verdict = _verdict(sample_version["root"], folder, capsys, monkeypatch)
        assert verdict in ("shifted", "another population"), kind


@pytest.mark.skipif(not NIH.is_dir(), reason=f"{NIH} is absent: another hospital's images "
                    "are not shipped with the project")
def test_another_hospitals_adults_are_another_population(sample_version: dict[str, Any],
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    verdict = _verdict(sample_version["root"], NIH, capsys, monkeypatch)
    assert verdict == "another population"
