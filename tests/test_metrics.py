"""The clinical objectives a search may optimize, exactly as scikit-learn computes them."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_exp.config import load_config
from pneumo_exp.errors import ConfigError
from pneumo_exp.evaluation.metrics import binary_metrics, spec_at_sens


def test_specificity_at_a_sensitivity_target_by_hand() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.05])
    # every positive caught needs a threshold at 0.2: NORMALs above it are 0.6, 0.3
    assert spec_at_sens(y, p, 1.0) == pytest.approx(0.5)
    # 3 of 4 positives (0.75) at 0.7: no NORMAL above it
    assert spec_at_sens(y, p, 0.75) == pytest.approx(1.0)
    figures = binary_metrics(y, p, 0.5, sensitivity_target=0.75)
    assert figures["spec_at_sens"] == 1.0
    assert figures["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 4) / 2)


def test_the_objectives_a_search_accepts() -> None:
    for objective in ("val_spec_at_sens", "val_balanced_accuracy"):
        cfg = load_config("aug_cnn", {"search.objective": objective})
        assert cfg.search.direction == "max"
    with pytest.raises(ConfigError, match=r"search\.sensitivity_target"):
        load_config("aug_cnn", {"search.sensitivity_target": 1.5})
    plain = load_config("aug_cnn").digest()
    assert load_config("aug_cnn", {"search.sensitivity_target": 0.9}).digest() == plain
    assert load_config("aug_cnn", {"search.objective": "val_spec_at_sens",
                                   "search.sensitivity_target": 0.9}).digest() != plain
