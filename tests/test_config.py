from pathlib import Path

import pytest

from pneumo_exp.config import EXPERIMENTS_DIR, architectures, load_config, parse_override
from pneumo_exp.errors import ConfigError


@pytest.mark.parametrize("arch", architectures())
def test_every_experiment_file_loads(arch: str) -> None:
    cfg = load_config(arch)
    assert cfg.arch == arch
    assert cfg.search.objective.startswith("val_")
    assert cfg.experiment_name == f"pneumo-exp/{arch}"


@pytest.mark.parametrize("arch", architectures())
def test_initial_points_build_inside_the_configured_space(arch: str) -> None:
    """A shipped initial point must be tried as written: every value within the space, and
    the model must fit the configured image size."""
    import keras_tuner as kt
    import numpy as np
    from conftest import tiny_base

    from pneumo_exp.hypermodels import build_hypermodel
    from pneumo_exp.search.kt_internals import allows
    cfg = load_config(arch)
    context = ({"base_models": [tiny_base(cfg.data.image_size)]} if arch == "site" else {})
    for point in cfg.search.initial_points:
        hp = kt.HyperParameters()
        hp.values.update(point)
        build_hypermodel(cfg, np.array([0, 1, 1]), **context).build(hp)
        space = {h.name: h for h in hp.space}
        assert {k: v for k, v in point.items() if not allows(space[k], v)} == {}


def test_aug_cnn_is_listed() -> None:
    assert "aug_cnn" in architectures()


def test_overrides_win_over_files() -> None:
    cfg = load_config("aug_cnn", {"search.max_trials": 2, "train.epochs": 2,
                                  "search.tuner": "random", "data.root": "/x",
                                  "space.dropout": 0.3})
    assert (cfg.search.max_trials, cfg.train.epochs, cfg.search.tuner) == (2, 2, "random")
    assert cfg.data.root == "/x"
    assert cfg.space["dropout"] == 0.3


def test_a_dataset_folders_settings_apply_over_the_file_and_under_the_command_line(
        tmp_path: Path) -> None:
    """defaults.yaml <- experiments/<arch>.yaml <- the dataset's pneumo-exp.yaml <- SET=."""
    from pneumo_exp.config import DATASET_SETTINGS

    (tmp_path / DATASET_SETTINGS).write_text("train:\n  epochs: 7\nsearch:\n  tuner: random\n")
    plain = load_config("aug_cnn")
    assert (plain.train.epochs, plain.search.tuner) != (7, "random")
    fitted = load_config("aug_cnn", {"data.root": str(tmp_path)})
    assert (fitted.train.epochs, fitted.search.tuner) == (7, "random")
    told = load_config("aug_cnn", {"data.root": str(tmp_path), "train.epochs": 2})
    assert (told.train.epochs, told.search.tuner) == (2, "random")


def test_digest_ignores_budgets_only() -> None:
    base = load_config("aug_cnn", {"search.screen_trials": 0})
    assert base.digest() == load_config("aug_cnn", {"search.screen_trials": 0,
                                                    "search.max_trials": 99}).digest()
    assert base.digest() != load_config("aug_cnn", {"train.epochs": 3}).digest()
    # a search that screens is named by its split: its stages number the trials after it
    split = {"data.root": "/x", "search.screen_trials": 12, "search.full_trials": 3,
             "search.max_trials": 15}
    screened = load_config("aug_cnn", split)
    assert screened.digest() == load_config("aug_cnn", {**split,
                                                        "search.time_budget_min": 5}).digest()
    assert screened.digest() != load_config("aug_cnn", {**split,
                                                        "search.max_trials": 30}).digest()


@pytest.mark.parametrize(("max_trials", "split"), [
    (None, (12, 3)), (15, (12, 3)), (30, (24, 6)), (10, (8, 2)), (5, (4, 1)), (2, (0, 2)),
    (1, (0, 1))])
def test_max_trials_counts_every_trial_and_keeps_the_split(max_trials: int | None,
                                                           split: tuple[int, int]) -> None:
    """aug_cnn screens 12 and trains 3: MAX_TRIALS=N runs N trials in all, shared alike, at
    least one at full fidelity, all of them when too few are left to screen."""
    overrides = {"data.root": "/x", "search.screen_trials": 12, "search.full_trials": 3}
    cfg = load_config("aug_cnn", {**overrides, "search.max_trials": max_trials}
                      if max_trials else {**overrides, "search.max_trials": None})
    assert cfg.search.split == split
    assert cfg.search.planned_trials == sum(split)


def test_epochs_cap_the_screening_too() -> None:
    from pneumo_exp.search.fidelity import describe_plan, stages

    cfg = load_config("aug_cnn", {"data.root": "/x", "search.screen_trials": 12,
                                  "search.full_trials": 3, "search.max_trials": 15,
                                  "search.screen_epochs": 3, "train.epochs": 2})
    assert [(st.name, st.trials, st.epochs) for st in stages(cfg)] == [
        ("screen", 12, 2), ("full", 3, 2)]
    assert "12 configurations screened" in describe_plan(cfg)
    one = load_config("aug_cnn", {"data.root": "/x", "search.max_trials": 1,
                                  "search.screen_trials": 12, "search.full_trials": 3})
    assert [(st.name, st.trials) for st in stages(one)] == [("full", 1)]
    assert "too few to screen" in describe_plan(one)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("train.epochs", -1, "train.epochs"),
    ("search.tuner", "grid", "search.tuner"),
    ("data.image_size", 0, "data.image_size"),
    ("data.channels", 2, "data.channels"),
    ("search.initial_points", {"dropout": 0.1}, "search.initial_points"),
    ("search.max_trials", "ten", "search.max_trials"),
    ("search.full_trials", 0, "search.full_trials"),
    ("search.max_trial", 3, "search.max_trial"),
    ("data.val_fraction", 0.9, "data.val_fraction"),
    ("registry.views", [], "registry.views"),
    ("registry.views", "original", "registry.views"),
    ("data.root", 5, "data.root"),
])
def test_bad_values_name_the_key_and_value(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("aug_cnn", {key: value})
    assert needle in str(err.value)
    assert repr(value) in str(err.value) or "unknown key" in str(err.value)


@pytest.mark.parametrize(("key", "value", "said"), [
    ("search.tuner", "grid", "'search.tuner': must be 'random', 'bayesian' or 'hyperband'; "
                             "got 'grid'."),
    ("data.image_size", 4, "'data.image_size': must be an integer >= 8; got 4."),
    ("train.epochs", True, "'train.epochs': must be a valid integer; got True."),
    ("search.screen_fraction", 0, "'search.screen_fraction': must be a number > 0; got 0."),
    ("site.base", "champion", "'site.base': must be a registered version, "
                              "models:/NAME/VERSION or models:/NAME@ALIAS; got 'champion'."),
    ("site.name", "a b", "'site.name': must be letters, digits, '-' or '_' (it becomes the "
                         "alias site-<name>); got 'a b'."),
])
def test_a_bad_value_says_what_the_key_allows(key: str, value: object, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("aug_cnn", {key: value})
    assert str(err.value) == said


def test_a_section_is_checked_whenever_it_is_built() -> None:
    """dataclasses.replace builds the section anew, so a stage's or a site's settings are
    checked as the files' are; an integer is taken for a number (the digest sees 3.0)."""
    import dataclasses

    from pneumo_exp.settings import DataConfig

    cfg = load_config("aug_cnn", {"search.time_budget_min": 3})
    assert isinstance(cfg.search.time_budget_min, float)
    assert dataclasses.replace(cfg.data, image_size=32).image_size == 32
    with pytest.raises(ConfigError, match=r"^'data\.image_size': .* got 4\.$"):
        dataclasses.replace(cfg.data, image_size=4)
    with pytest.raises(ConfigError, match=r"^unknown key 'data\.size'; known: root, "):
        DataConfig(size=32)
    with pytest.raises(ConfigError, match=r"'search\.full_trials'.*screen_trials > 0"):
        load_config("aug_cnn", {"search.screen_trials": 4, "search.full_trials": None})


def test_unknown_architecture_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnet9'.*aug_cnn"):
        load_config("resnet9")


def test_unknown_section(tmp_path: Path) -> None:
    (tmp_path / "defaults.yaml").write_text((EXPERIMENTS_DIR / "defaults.yaml").read_text())
    (tmp_path / "x.yaml").write_text("serach:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="unknown configuration section 'serach'"):
        load_config("x", experiments_dir=tmp_path)


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("space.optimizer=[adam, sgd]") == ("space.optimizer", ["adam", "sgd"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("epochs")


def test_training_callbacks_follow_the_configuration() -> None:
    import keras
    import numpy as np

    from pneumo_exp.search.callbacks import StopOnInterrupt, ValidationFigures, training_callbacks
    val = (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]))
    plain = training_callbacks(load_config("aug_cnn", {"train.patience": 4,
                                                       "train.reduce_lr_patience": None,
                                                       "train.lr_schedule": "constant"}), *val)
    kinds = [type(c) for c in plain]
    assert kinds == [ValidationFigures, keras.callbacks.EarlyStopping,
                     keras.callbacks.TerminateOnNaN, StopOnInterrupt]
    assert plain[1].patience == 4 and plain[1].monitor == "val_auc" and plain[1].mode == "max"
    scheduled = training_callbacks(load_config("aug_cnn", {"train.reduce_lr_patience": 2,
                                                           "train.lr_schedule": "constant",
                                                           "search.objective": "val_loss"}), *val)
    (plateau,) = [c for c in scheduled if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    assert (plateau.patience, plateau.monitor, plateau.mode) == (2, "val_loss", "min")
    with pytest.raises(ConfigError, match="reduce_lr_patience"):
        load_config("aug_cnn", {"train.reduce_lr_patience": 0})
    with pytest.raises(ConfigError, match="reduce_lr_patience"):  # two rules for one rate
        load_config("aug_cnn", {"train.reduce_lr_patience": 2, "train.lr_schedule": "cosine"})


def test_the_cosine_schedule_anneals_a_trial_to_zero_over_its_epochs() -> None:
    import keras
    import numpy as np

    from pneumo_exp.search.callbacks import CosineDecayPerEpoch, training_callbacks
    val = (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]))
    cfg = load_config("aug_cnn", {"train.lr_schedule": "cosine", "train.epochs": 4,
                                  "train.reduce_lr_patience": None})
    (cosine,) = [c for c in training_callbacks(cfg, *val) if isinstance(c, CosineDecayPerEpoch)]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    rates = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(
        float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
    seen: list[float] = []
    model.fit(np.zeros((8, 2)), np.zeros(8), epochs=4, verbose=0, callbacks=[cosine, rates])
    assert seen == pytest.approx([2e-3, 2e-3 * 0.5 * (1 + np.cos(np.pi / 4)), 1e-3,
                                  2e-3 * 0.5 * (1 + np.cos(3 * np.pi / 4))])


def test_a_screened_search_logged_before_full_trials_loads() -> None:
    """Its max_trials counted the full-fidelity trials only."""
    from pneumo_exp.config import config_from_dict

    old = load_config("aug_cnn").to_dict()
    old["search"].pop("full_trials")
    old["search"].update(screen_trials=12, max_trials=3)
    cfg = config_from_dict(old)
    assert (cfg.search.full_trials, cfg.search.max_trials, cfg.search.split) == (3, 15, (12, 3))


@pytest.mark.parametrize("entry, said", [({"min": 0.5}, "mapping with min and max"),
                                         ({"min": 0.5, "max": 0.1}, "min must not exceed"),
                                         ({"min": 0.1, "max": 0.5, "sampling": "cube"},
                                          "sampling must be"),
                                         ([], "at least one value")])
def test_a_bad_space_entry_stops_when_the_settings_are_read(entry: object, said: str) -> None:
    with pytest.raises(ConfigError, match=rf"'space\.dropout'.*{said}"):
        load_config("aug_cnn", {"space.dropout": entry})
