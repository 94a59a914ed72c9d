"""Which aliases a new version takes, one rule for every path that registers a version:
`champion` and `challenger` are the training site's; a site's version (its `TAG_SITE`)
takes `site-<name>` only, its validation being of other patients. Aliases move last, once
everything that can fail has run (docs/sites.md; tests/test_alias_rule.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pneumo_exp.errors import UserError
from pneumo_exp.tracking.names import (
    CHALLENGER,
    CHAMPION,
    TAG_BASE_VERSION,
    TAG_OBJECTIVE,
    TAG_OBJECTIVE_VALUE,
    TAG_SITE,
    site_alias,
)

log = logging.getLogger(__name__)


def run_site(run: Run) -> str | None:
    """The site a trial run (or its search) was searched for; None: the training site."""
    return run.data.tags.get(TAG_SITE)


def promotion_site(trials: Sequence[Run], site: str | None) -> str | None:
    """The site the version of `trials` is for (None: the training site), or one message
    why they cannot be one version: they mix sites, are not of the site asked for, or are a
    site's trials of several bases."""
    sites = {run_site(t) for t in trials}
    if len(sites) > 1:
        named = ", ".join(sorted(f"site {s}" if s else "the training site" for s in sites))
        raise UserError(f"these trials are of different sites ({named}): a version is for one "
                        "site. Promote the training site's with `make promote`, and each "
                        "site's with `make promote ARCH=site SITE=<name>`.")
    (found,) = sites
    if site is not None and found != site:
        raise UserError(f"the trial is {f'of site {found}' if found else 'of the training site'}"
                        f", not of site {site}: leave out SITE=, or give that site's trial.")
    bases = sorted({t.data.tags.get(TAG_BASE_VERSION, "?") for t in trials})
    if found is not None and len(bases) > 1:
        raise UserError(f"the best trials of site {found} start from different base versions "
                        f"({', '.join(bases)}), and a version names one base: promote one "
                        "search's trials with NAME=<search> (`pneumo-exp runs` lists them), "
                        "or TOP=1.")
    return found


def move_aliases(client: MlflowClient, name: str, version: str, direction: str = "max",
                 tested: bool = False) -> str:
    """Move the new version's aliases by the rule above (`champion` too when a tested
    version beats it); the champion's version afterwards."""
    champion = alias_version(client, name, CHAMPION)
    new = client.get_model_version(name, version).tags
    if TAG_SITE in new:
        client.set_registered_model_alias(name, site_alias(new[TAG_SITE]), version)
        return champion or "-"
    if not tested:
        raise ValueError(f"version {version} has no test evaluation: it may not become "
                         f"{CHALLENGER} or {CHAMPION}")
    client.set_registered_model_alias(name, CHALLENGER, version)
    old = client.get_model_version(name, champion).tags if champion is not None else {}
    if TAG_SITE in old:  # a site's version made champion before this rule: it never ranks
        log.warning("the champion, version %s, is site %s's version: version %s, of the "
                    "training site, takes its place.", champion, old[TAG_SITE], version)
    elif champion is not None:
        if new[TAG_OBJECTIVE] != old.get(TAG_OBJECTIVE):
            log.warning("version %s was chosen by %s and the champion (version %s) by %s: "
                        "they do not compare, so the champion stays.", version,
                        new[TAG_OBJECTIVE], champion, old.get(TAG_OBJECTIVE))
            return champion
        a, b = float(new[TAG_OBJECTIVE_VALUE]), float(old[TAG_OBJECTIVE_VALUE])
        if not (a > b if direction == "max" else a < b):
            return champion
    client.set_registered_model_alias(name, CHAMPION, version)
    return version


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number `alias` points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None
