"""Every name pneumo-exp writes into MLflow, defined once: experiments, run roles, tags of
runs and of registered versions, artifact paths and aliases. Readers and writers import
them from here, so a rename is one line."""

from __future__ import annotations

from collections.abc import Mapping

# Metrics are logged to 4 decimals: a validation figure of 538 images moves in the third
# (one image is 0.002), and the MLflow UI shows whatever digits it is given.
METRIC_DECIMALS = 4


def rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as pneumo-exp logs them: to METRIC_DECIMALS, counts unchanged."""
    return {k: round(float(v), METRIC_DECIMALS) for k, v in metrics.items()}

# Experiments: one per architecture, and one for `pneumo-exp evaluate`.
EXPERIMENT_PREFIX = "pneumo-exp/"
EVALUATION_EXPERIMENT = f"{EXPERIMENT_PREFIX}evaluations"


def arch_experiment(arch: str) -> str:
    return f"{EXPERIMENT_PREFIX}{arch}"


# What a run is: pneumo.role is one of these.
TAG_ROLE = "pneumo.role"
ROLE_SEARCH, ROLE_TRIAL, ROLE_CV, ROLE_FOLD = "search", "trial", "cv", "fold"
ROLE_EVALUATION, ROLE_ADAPTATION = "evaluation", "adaptation"

# Provenance, on every run the product writes (tracking.store.provenance).
TAG_DATA = "pneumo.data_fingerprint"
TAG_CODE_VERSION = "pneumo.version"
TAG_GIT_DIRTY = "pneumo.git_dirty"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own, shown in its UI

# Runs of a search and of a cross-validation.
TAG_ARCH = "pneumo.arch"
TAG_SEARCH = "pneumo.search"
TAG_TRIAL = "pneumo.trial_id"
TAG_TUNER = "pneumo.tuner_id"  # which Keras Tuner process ran a trial (distributed search)
TAG_MACHINE = "pneumo.machine"  # the kind of CPU that trained a trial (tracking.machine)
TAG_STATUS = "pneumo.trial_status"  # how a trial ended: completed, early stopped, ...
STATUS_CUT = "cut by the time budget"  # the start of the status of a trial the budget cut
TAG_FAILURE = "pneumo.failure"  # why a run failed
TAG_FOLD = "pneumo.fold"
# The params of a search's parent run that decide its validation images: searches alike in
# them validated on the same images, in the same order.
VALIDATION_PARAMS = ("data.source", "data.validation", "data.val_fraction", "search.seed")
TAG_FIDELITY = "pneumo.fidelity"  # SCREEN or FULL: the stage of a multi-fidelity search
SCREEN, FULL = "screen", "full"
FIDELITY_PARAM = "fidelity."  # prefix of a trial's params that say its fidelity
TAG_CANDIDATE = "pneumo.candidate"  # "true": a full-fidelity trial promote may package
TAG_CHECKPOINT = "pneumo.checkpoint"  # where a trial's best checkpoint is, or why none is kept
TAG_BEST_TRIAL = "best_trial_id"  # on a search's parent run
TAG_BEST_RUN = "best_run_id"
TAG_MAX_TRIALS = "search.max_trials"  # budgets may grow when a search is extended: tags
TAG_SPLIT = "search.split"  # how its trials are shared: "12 screened + 3 full"
TAG_TIME_BUDGET = "search.time_budget_min"
TAG_TRIALS_PLANNED = "search.trials_planned"  # how the search ended: planned trials, and
TAG_TRIALS_COMPLETED = "search.trials_completed"  # of them completed, and cut by the
TAG_TRIALS_CUT = "search.trials_cut"  # time budget (they run when the search resumes)

# Registered versions (and the runs that hold their models).
TAG_SOURCES = "pneumo.source_run_ids"  # the trial runs a version packages, sorted, comma-separated
TAG_MEMBERS = "pneumo.members"
TAG_SEARCH_RUNS = "pneumo.search_run_ids"
TAG_EVALUATION_RUN = "pneumo.evaluation_run_id"
TAG_THRESHOLD = "pneumo.threshold"
TAG_MIN_SENSITIVITY = "pneumo.min_sensitivity"  # the validation sensitivity it was promoted for
TAG_VALIDATED = "pneumo.validated"  # JSON: [hits, total] of its validation sensitivity and
# specificity at the stored threshold, what a site's report is judged against
TAG_TEMPERATURE = "pneumo.temperature"
TAG_OBJECTIVE = "pneumo.objective"
TAG_OBJECTIVE_VALUE = "pneumo.objective_value"
TAG_HYPERPARAMETERS = "pneumo.hyperparameters"
TAG_MODEL_URI = "pneumo.model_uri"  # on an evaluation run of `pneumo-exp evaluate`
TAG_NEW_SITE = "pneumo.new_site"  # figures of bench/new_site.py, JSON
TAG_SITE = "pneumo.site"
TAG_ADAPTED_FROM = "pneumo.adapted_from"  # on an adaptation run: name/version
TAG_ADAPTED_FROM_VERSION = "pneumo.adapted_from_version"
TAG_ADAPTATION_IMAGES = "pneumo.adaptation_images"
TAG_ADAPTATION_FINGERPRINT = "pneumo.adaptation_fingerprint"
TAG_ADAPTATION_RUN = "pneumo.adaptation_run_id"
TAG_BASE_VERSION = "pneumo.base_version"  # a site version's search: the version it started
TAG_BASE_RUN = "pneumo.base_run_id"  # from (name/version), and the run holding its model
# A site version's figures (metric prefixes): on its base's validation (also each of the
# site's trials judged, its AUC), and on all of its site's labelled images out of fold
TRAINING_SITE, OUT_OF_FOLD = "training_site_", "site_oof_"


def figure_tag(name: str) -> str:
    """A version's validation figure as a tag: pneumo.val_auc, ..."""
    return f"pneumo.{name}"


# Aliases of registered versions.
CHAMPION, CHALLENGER = "champion", "challenger"


def site_alias(site: str) -> str:
    return f"site-{site}"


# Artifacts.
CONFIG_ARTIFACT = "config.yaml"  # a search's or cv's configuration
SKIPPED_ARTIFACT = "data/skipped_files.tsv"
TRIALS_TABLE = "trials.json"
TRIALS_TEXT = "trials.txt"
SEARCH_PROGRESS_PLOT = "plots/search_progress.png"
IMPORTANCE_TABLE, IMPORTANCE_TEXT = "importance/importance.json", "importance/importance.txt"
IMPORTANCE_PLOTS = ("importance", "parallel_coordinates", "landscape")  # plot(name)
TRIAL_MODEL = "model"  # the logged Keras model of a trial run
VAL_PREDICTIONS = "val_predictions.json"  # a trial's best checkpoint on its validation images
PACKAGED_MODEL = "classifier"  # the pyfunc model of a promotion or adaptation run
MODEL_CARD = "model_card.md"
PREDICTIONS = "predictions.json"
SITE_REPORT_PNG, SITE_REPORT_HTML = "report/site_report.png", "report/site_report.html"
SITE_CHECK_PNG, SITE_CHECK_HTML = "report/site_check.png", "report/site_check.html"


def plot(name: str) -> str:
    return f"plots/{name}.png"


def plot_counts(name: str) -> str:
    """The counts behind a confusion-matrix plot, as JSON."""
    return f"plots/{name}.json"


def gradcam_plot(kind: str) -> str:
    return f"gradcam/val_{kind}.png"
