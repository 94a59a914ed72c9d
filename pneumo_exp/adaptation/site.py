"""`pneumo-exp adapt`: a registered version's batch-normalization statistics re-estimated on
a new site's unlabeled images, registered as a new version of the same model with the alias
`site-<name>` and the source's contract, judged by its features as adapted
(docs/sites.md, section 3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from pneumo_exp.data.images import decode_many, files_fingerprint
from pneumo_exp.errors import ConfigError, DataError, UserError
from pneumo_exp.registry import model_card
from pneumo_exp.registry.aliases import move_aliases
from pneumo_exp.registry.packaging import write_version
from pneumo_exp.serving.batch_norm import (
    MIN_ADAPTATION_IMAGES,
    adapt_batch_norm,
    batch_norm_layers,
)
from pneumo_exp.serving.model import classifier
from pneumo_exp.serving.predict import load, version_contract
from pneumo_exp.settings import SITE_NAME
from pneumo_exp.tracking.model_uri import registered_version, version_uri
from pneumo_exp.tracking.names import (
    ROLE_ADAPTATION,
    TAG_ADAPTATION_FINGERPRINT,
    TAG_ADAPTATION_IMAGES,
    TAG_ADAPTATION_RUN,
    TAG_ADAPTED_FROM,
    TAG_ADAPTED_FROM_VERSION,
    TAG_ARCH,
    TAG_DATA,
    TAG_HYPERPARAMETERS,
    TAG_MEMBERS,
    TAG_OBJECTIVE,
    TAG_SEARCH_RUNS,
    TAG_SITE,
    TAG_SOURCES,
)
from pneumo_exp.tracking.runs import start_run
from pneumo_exp.tracking.store import connect

log = logging.getLogger(__name__)

LINEAGE_TAGS = (TAG_ARCH, TAG_SOURCES, TAG_MEMBERS, TAG_SEARCH_RUNS, TAG_DATA, TAG_OBJECTIVE,
                TAG_HYPERPARAMETERS)  # the source version's, kept by the adapted one


@dataclass(frozen=True)
class Adaptation:
    version: ModelVersion
    source: ModelVersion
    images: int
    skipped: int
    layers: int


def adapt(model_uri: str, files: list[Path], root: Path, images_from: str,
          site: str) -> Adaptation:
    """Adapt the version `model_uri` to the image `files` (they lie under `root`;
    `images_from` says where they came from); register the result."""
    if not SITE_NAME.match(site):
        raise ConfigError(f"site must be letters, digits, '-' or '_' (it becomes the alias "
                          f"site-<name>); got {site!r}.")
    client = connect()
    source = registered_version(client, model_uri)
    name, number = source.name, str(source.version)
    loaded = load(version_uri(source))  # by its number: an alias may move meanwhile
    model = classifier(loaded)
    if not all(batch_norm_layers(m.model) for m in model.members):
        raise UserError(f"{model_uri} has nothing to adapt: "
                        f"{'a member has' if len(model.members) > 1 else 'it has'} no batch "
                        "normalization layer, so there are no normalization statistics to "
                        "re-estimate. Adapt a model searched with batch_norm=true.")
    # the source's contract, its feature references included, but for the features it is
    # now judged by: validation as the network sees it once adapted (only the
    # normalization statistics change)
    contract = version_contract(loaded, source.tags)
    if contract.features is None:
        raise UserError(f"{model_uri} (version {number}) was registered before versions kept "
                        "their validation images' features, so a version adapted from it "
                        "could not be checked against them (site-check, predict's note). "
                        "Adapt a version promoted since.")
    if contract.features_adapted is None:  # validation too small to adapt to, or older
        raise UserError(f"{model_uri} (version {number}) keeps no reference of its validation "
                        "images as an adapted network sees them (its validation held fewer "
                        f"than {MIN_ADAPTATION_IMAGES} images, or it was registered before "
                        "versions kept one), so a version adapted from it could not be "
                        "checked against its training images (site-check, predict's note). "
                        "Adapt a version promoted from a validation split of at least "
                        f"{MIN_ADAPTATION_IMAGES} images.")
    contract = contract.with_changes(features=contract.features_adapted)
    decoded = decode_many(files, {m.preprocessing for m in model.members})
    read, skipped = [files[i] for i in decoded.readable], len(decoded.skipped)
    if len(read) < MIN_ADAPTATION_IMAGES:
        found = f"{len(files)} files, {len(read)} readable images" if files else "no files"
        raise DataError(f"{images_from} has {found}; adapting needs at least "
                        f"{MIN_ADAPTATION_IMAGES} images of the site.")
    layers = sum(adapt_batch_norm(m.model, decoded.arrays[m.preprocessing])
                 for m in model.members)
    digest = files_fingerprint(root, read)
    lineage = {**{k: v for k, v in source.tags.items() if k in LINEAGE_TAGS}, TAG_SITE: site,
               TAG_ADAPTED_FROM_VERSION: number, TAG_ADAPTATION_IMAGES: str(len(read)),
               TAG_ADAPTATION_FINGERPRINT: digest}
    with start_run(client.get_run(source.run_id).info.experiment_id,
                   f"adaptation-{site}-of-v{number}", ROLE_ADAPTATION, digest,
                   {TAG_SITE: site, TAG_ADAPTED_FROM: f"{name}/{number}"}) as run:
        mlflow.log_params({"source": f"models:/{name}/{number}", "site": site,
                           "images": len(read), "skipped_files": skipped,
                           "fingerprint": digest, "images_from": images_from,
                           "batch_norm_layers": layers})
        version = write_version(name, contract, [m.model for m in model.members],
                                {**lineage, TAG_ADAPTATION_RUN: run.info.run_id})
    new = str(version.version)
    card = model_card.for_adaptation(source.description or "", name, new, number, site,
                                     len(read), digest, layers)
    model_card.publish(client, name, new, card, run.info.run_id)
    move_aliases(client, name, new)  # its TAG_SITE: site-<site> only
    return Adaptation(client.get_model_version(name, new), source, len(read), skipped, layers)
