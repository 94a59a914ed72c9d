"""A site version's promotion (`make promote ARCH=site SITE=north`): the best trials of the
site's searches, registered as a version of the same model with the alias `site-<name>`
(`champion` and `challenger` never move: registry/aliases.py), a tag naming the base
version, and a card with its figures on the site's validation and on the training
hospital's.

The training hospital's figures are the version scored on its base version's validation
images (rebuilt from the base's search, as promote rebuilds any), at the site's threshold:
a version that forgot the patients it came from says so on its card.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pneumo_exp.data.dataset import load_training_data
from pneumo_exp.errors import DataError, UserError
from pneumo_exp.evaluation.calibration import apply_temperature
from pneumo_exp.evaluation.metrics import binary_metrics
from pneumo_exp.registry import model_card
from pneumo_exp.registry.selection import Candidate, candidate
from pneumo_exp.serving.contract import VersionContract
from pneumo_exp.serving.model import Member, ensemble_probability
from pneumo_exp.tracking.model_uri import PREFIX, registered_version
from pneumo_exp.tracking.names import (
    TAG_BASE_VERSION,
    TAG_SITE,
    TAG_SOURCES,
    figure_tag,
    rounded,
)

log = logging.getLogger(__name__)
TRAINING_SITE = "training_site_"  # the prefix of its figures on the base's validation


def training_site_figures(client: MlflowClient, base: str, members: Sequence[Member],
                          contract: VersionContract) -> dict[str, float]:
    """The version's figures on the base version's validation images, at its own
    threshold and temperature; none when those images cannot be rebuilt."""
    try:
        version = registered_version(client, f"{PREFIX}{base}")
        first = candidate(client, client.get_run(version.tags[TAG_SOURCES].split(",")[0]))
        (size, channels), = {m.preprocessing for m in members}
        data = dataclasses.replace(first.cfg.data, image_size=size, channels=channels)
        val = load_training_data(data, first.cfg.search.seed).val
    except (mlflow.exceptions.MlflowException, KeyError, ValueError, DataError, UserError,
            OSError) as e:
        log.warning("the training hospital's validation images cannot be rebuilt (%s): the "
                    "card gives the site's figures only.", str(e).splitlines()[0])
        return {}
    prob = ensemble_probability(members, {(size, channels): val.images}, 1.0,
                                views=contract.views)
    f = binary_metrics(val.labels, apply_temperature(prob, contract.temperature),
                       contract.threshold)
    return {f"{TRAINING_SITE}auc": float(f["auc"]),
            **{f"{TRAINING_SITE}{k}_at_thr": float(f[k])
               for k in ("sensitivity", "specificity", "accuracy")}}


def publish(client: MlflowClient, name: str, number: str, candidates: Sequence[Candidate],
            members: Sequence[Member], contract: VersionContract,
            val_figures: Mapping[str, float], evaluation_run: str,
            registry: Any) -> dict[str, float]:
    """The card and the training hospital's figures (logged to the evaluation run too) of
    a new site version; its figures. (Its alias moves after: registry/aliases.py.)"""
    tags = candidates[0].search.data.tags
    site, base = tags[TAG_SITE], tags[TAG_BASE_VERSION]
    training = training_site_figures(client, base, members, contract)
    for key, value in rounded(training).items():
        client.log_metric(evaluation_run, key, value)
    base_tags = registered_version(client, f"{PREFIX}{base}").tags
    base_auc = base_tags.get(figure_tag("val_auc"))
    card = model_card.for_site(name, number, candidates, val_figures, training, contract,
                               registry, site, base, float(base_auc) if base_auc else None)
    model_card.publish(client, name, number, card, evaluation_run)
    return {**{k: v for k, v in val_figures.items() if k.endswith("_at_thr") or k == "val_auc"},
            **training}
