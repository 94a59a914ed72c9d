"""What a site version's search needs before its first trial (ARCH=site): the base version
from the registry (registry/site_version.py `Base`), the site's population, and the lineage
its runs record; the search itself is search/run.py's, with these (docs/sites.md, section 4).

    make search ARCH=site BASE=models:/pneumonia-classifier@champion DATA=site_folder/ SITE=north
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pneumo_exp.config import ExperimentConfig, PopulationConfig
from pneumo_exp.data.site_folder import csv_population
from pneumo_exp.errors import ConfigError, UserError
from pneumo_exp.registry.site_version import Base
from pneumo_exp.tracking.model_uri import registered_version, version_uri
from pneumo_exp.tracking.names import (
    ROLE_SEARCH,
    TAG_BASE_RUN,
    TAG_BASE_VERSION,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_SITE,
)
from pneumo_exp.tracking.queries import every, quoted
from pneumo_exp.tracking.store import connect

log = logging.getLogger(__name__)


def prepare(cfg: ExperimentConfig, search_name: str | None = None
            ) -> tuple[ExperimentConfig, dict[str, Any], dict[str, str]]:
    """`cfg` with the site's name, the base's image size and channels, and the base by its
    number, read once here so that the search's name (a digest of `cfg`) and record name the
    version it starts from; the hypermodel's context (the base's members, scratch point and
    training site's images); the lineage tags of the search's runs."""
    if not cfg.site.base:
        raise ConfigError("a site search starts from a registered version: give "
                          "BASE=models:/pneumonia-classifier@champion (or --base).")
    client = connect()
    try:
        version = registered_version(client, cfg.site.base)
    except UserError as e:
        raise UserError(f"BASE={cfg.site.base} is not a registered version ({e})") from None
    base = Base(client, version)
    size, channels = base.preprocessing
    if cfg.data.image_size != size or cfg.data.channels != channels:
        log.info("Site search at the base's preprocessing: %d px, %d channel(s).", size,
                 channels)
    site = cfg.site.name  # SITE=, else the data folder's name
    if not site:
        if not cfg.data.root:
            raise ConfigError("a site search needs the site's labelled folder: give "
                              "DATA=folder (NORMAL/ and PNEUMONIA/ inside) and SITE=name.")
        site = Path(cfg.data.root).resolve().name
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, image_size=size, channels=channels),
        site=dataclasses.replace(cfg.site, name=site, base=version_uri(version)),
        population=population(cfg, site))
    # a search `search_name` resumed from another base than it recorded (the alias BASE
    # named moved since) is refused: its trials would start from one version, its record
    # name another
    experiment = (client.get_experiment_by_name(cfg.experiment_name)
                  if search_name is not None else None)
    searches = every(client.search_runs, [experiment.experiment_id],
                     f"tags.`{TAG_ROLE}` = {quoted(ROLE_SEARCH)} and "
                     f"tags.`{TAG_SEARCH}` = {quoted(search_name)}") if experiment else []
    recorded = sorted({r.data.tags.get(TAG_BASE_VERSION, "?") for r in searches} - {base.name})
    if recorded:
        raise UserError(f"search '{search_name}' started from {', '.join(recorded)}, and BASE "
                        f"names {base.name} now: a search has one base. Resume it with "
                        f"BASE=models:/{recorded[0]}, or give the new one another NAME=.")
    return cfg, base.context(cfg.train.batch_size), {
        TAG_SITE: site, TAG_BASE_VERSION: base.name, TAG_BASE_RUN: version.run_id}


def population(cfg: ExperimentConfig, site: str) -> PopulationConfig:
    """Whom the site's version is for: as its settings state it, else as its labels.csv
    shows it (its patients' ages and views), else the site's patients, unbounded."""
    given = cfg.population
    if given.stated:
        return given
    found = csv_population(Path(cfg.data.root)) if cfg.data.root else None
    if found is None:
        return dataclasses.replace(given, description=f"the patients of site {site}")
    low, high, views = found
    seen = ([f"aged {low:g}-{high:g}"] if low is not None and high is not None else []) + (
        [f"views {', '.join(views)}"] if views else [])
    return dataclasses.replace(
        given, min_age=low, max_age=high, views=views,
        description=f"the patients of site {site} ({', '.join(seen)} in its labels.csv)")
