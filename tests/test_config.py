"""Typed configs: YAML + dotted overrides, clear errors, every configs/ file parses."""

import dataclasses
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from fgjax.config import Config, DataConfig, DetectorConfig, EvaluateConfig, Rule, from_dict, load_config, parse_override, rule_of, to_dict
from fgjax.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_round_trip_through_dict():
    config = Config()
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    config = load_config(path)
    assert isinstance(config, Config)


def test_configs_directory_is_not_empty():
    assert len(CONFIGS) >= 2


def test_quickstart_yaml_matches_defaults():
    # The quickstart file documents the defaults; if they drift, one is wrong.
    assert load_config(CONFIGS[[p.name for p in CONFIGS].index("quickstart.yaml")]) == Config()


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\nanalysis:\n  alpha: 1\n")
    config = load_config(path, ["train.epochs=5", "evaluate.ks=[5, 50]", "analysis.half_life_windows=.inf",
                                "data.columns.user_id=user_id:token"])
    assert config.train.epochs == 5
    assert config.analysis.alpha == 1.0 and isinstance(config.analysis.alpha, float)
    assert config.evaluate.ks == [5, 50]
    assert math.isinf(config.analysis.half_life_windows)
    assert config.data.columns.user_id == "user_id:token"


def test_mapping_override_merges_onto_defaults():
    config = load_config(None, ["data.event_weights.share=3"])
    assert config.data.event_weights["share"] == 3.0
    assert config.data.event_weights["purchase"] == Config().data.event_weights["purchase"]


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
        ("train.epochs=1.5", "train.epochs: expected an integer"),
        ("analysis.alpha=[1]", "analysis.alpha: expected a number"),
        ("recommend.exclude_seen=maybe", "recommend.exclude_seen: expected true or false"),
        ("analysis.forgetting_mode=fade", "analysis.forgetting_mode: expected one of decline, change"),
        ("train.epochs", "expected KEY=VALUE"),
        ("evaluate.ks=[1, x]", "evaluate.ks[1]: expected an integer"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_override_value_is_yaml_not_code():
    key, value = parse_override("data.path=__import__('os').getcwd()")
    assert value == "__import__('os').getcwd()"


# Rules beside their fields: each message is pinned here (other tests and users match on them).
@pytest.mark.parametrize(
    "override, message",
    [
        ("analysis.window_seconds=0", "analysis.window_seconds: expected a value > 0, got 0.0"),
        ("analysis.alpha=-1", "analysis.alpha: expected a value >= 0, got -1.0"),
        ("analysis.alpha=.inf", "analysis.alpha: expected a finite number, got inf"),
        ("analysis.detector.buffer_windows=2", "analysis.detector.buffer_windows: expected a value >= 3, got 2"),
        ("analysis.detector.false_alarm=1", "analysis.detector.false_alarm: expected a value < 1, got 1.0"),
        ("analysis.detector.false_alarm=0", "analysis.detector.false_alarm: expected a value > 0, got 0.0"),
        ("analysis.detector.kind=seed", "analysis.detector.kind: expected one of adaptive, level, got 'seed'"),
        ("analysis.level.forgotten_ratio=-0.1", "analysis.level.forgotten_ratio: expected a value >= 0, got -0.1"),
        ("recommend.explore_probability=1.5", "recommend.explore_probability: expected a value <= 1, got 1.5"),
        ("recommend.state_weights.forgotten=-1", "recommend.state_weights.forgotten: expected a value >= 0, got -1.0"),
        ("recommend.state_weights.bored=1", "recommend.state_weights.bored: unknown state; states are none, new, active"),
        ("data.event_weights.view=-2", "data.event_weights.view: expected a value >= 0, got -2.0"),
        ("data.format=xlsx", "data.format: expected one of auto, parquet, csv, ipc, recbole, movielens, got 'xlsx'"),
        ("data.columns.item_id=user_id", "data.columns: column 'user_id' is mapped to more than one field"),
        ("evaluate.ks=[]", "evaluate.ks: expected at least one cut-off, e.g. [10, 20]"),
        ("evaluate.silence_sweep=[3, 0]", "evaluate.silence_sweep[1]: expected a value >= 1, got 0"),
        ("sequence.dim=65", "sequence.dim=65: expected a multiple of sequence.heads=2"),
        ("sequence.dropout=1", "sequence.dropout: expected a value < 1, got 1.0"),
        ("quality.cutoff_quantiles=[0.9, 0.8]", "quality.cutoff_quantiles: expected [validation, test] with 0 < valid"),
        ("quality.sweep_alpha=[]", "quality.sweep_alpha: expected at least one value"),
        ("quality.sweep_half_life_windows=[-1]", "quality.sweep_half_life_windows[0]: expected a value > 0, got -1.0"),
    ],
)
def test_field_rules_and_section_checks_keep_their_messages(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)


def test_every_rule_is_enforced_at_its_bound():
    # Walk the rules declared beside the fields: a value just past each bound is
    # refused naming the key, the bound itself passes when it is inclusive.
    checked = 0
    for key, field in _rule_fields(Config, ""):
        rule = rule_of(field)
        for bound, inclusive, step in ((rule.ge, True, -1), (rule.gt, False, -1), (rule.le, True, 1), (rule.lt, False, 1)):
            if bound is None:
                continue
            refused = re.compile(rf"^{re.escape(key)}(\[\d+\]|\.\w+)?: expected a value")
            past = _typed(field, bound + step)
            assert refused.match(_error(f"{key}={past}")), (key, past)
            # At the bound: refused when exclusive; else accepted (or stopped by another field's rule).
            value = _typed(field, bound)
            assert bool(refused.match(_error(f"{key}={value}"))) != inclusive, (key, value)
            checked += 1
    assert checked >= 69  # every bound that the old string-keyed table held, and the upper bounds


def _error(override):
    try:
        load_config(None, [override])
    except ConfigError as exc:
        return str(exc)
    return ""


def _rule_fields(cls, prefix):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}" if prefix else field.name
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _rule_fields(hints[field.name], key)
        elif rule_of(field) != Rule():
            yield key, field


def _typed(field, number):
    """An override value of the field's type (a one-element list or mapping for collections)."""
    number = int(number) if field.type in ("int", "list[int]") else float(number)
    if field.type.startswith("list"):
        return f"[{number}]"
    if field.type.startswith("dict"):
        return f"{{{next(iter(field.default_factory()))}: {number}}}"
    return str(number)


def test_lists_and_mappings_get_fresh_defaults():
    # (Sections nested in Config() are shared frozen instances; each new section gets its own lists.)
    a, b = EvaluateConfig(), EvaluateConfig()
    assert a.ks == b.ks == [10, 20] and a.ks is not b.ks
    c, d = DataConfig(), DataConfig()
    assert c.event_weights == d.event_weights and c.event_weights is not d.event_weights
    assert isinstance(c.event_weights, dict)


@pytest.mark.parametrize("old", ["declining_ratio", "forgotten_ratio"])
def test_renamed_level_keys_name_the_new_key(tmp_path, old):
    path = tmp_path / "old.yaml"
    path.write_text(f"analysis:\n  {old}: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config key 'analysis.{old}' was renamed: use 'analysis.level.{old}' instead"
    with pytest.raises(ConfigError, match=f"use 'analysis.level.{old}'"):
        load_config(None, [f"analysis.{old}=0.3"])
    # The detector's declining ratio of the same name is another knob and keeps its key; its old
    # drop-test forgotten_ratio is now the fade definition, fade_share.
    if old == "declining_ratio":
        assert load_config(None, [f"analysis.detector.{old}=0.3"]).analysis.detector.declining_ratio == 0.3
    else:
        with pytest.raises(ConfigError, match="use 'analysis.detector.fade_share' instead"):
            load_config(None, [f"analysis.detector.{old}=0.3"])
    assert getattr(load_config(None, [f"analysis.level.{old}=0.2"]).analysis.level, old) == 0.2


def test_detector_defaults_have_one_source():
    from fgjax import kernels

    # DetectorParams declares the knobs but no defaults; the config holds them.
    assert kernels.DetectorParams._field_defaults == {}
    detector = DetectorConfig()
    params = detector.kernel_params()
    assert isinstance(params, kernels.DetectorParams)
    # Every knob but life_windows is a config field of the same name; life_windows is life_days in windows.
    fields = set(kernels.DetectorParams._fields) - {"life_windows"}
    assert fields <= {f.name for f in dataclasses.fields(DetectorConfig)}
    assert {k: v for k, v in params._asdict().items() if k != "life_windows"} == {
        name: getattr(detector, name) for name in fields}
    assert params.life_windows == detector.life_days == 200
    assert detector.kernel_params(7 * 86400.0).life_windows == pytest.approx(200 / 7)
    changed = load_config(None, ["analysis.detector.false_alarm=0.05"]).analysis.detector.kernel_params()
    assert changed.false_alarm == 0.05 and changed.gap_factor == detector.gap_factor


def test_loading_a_config_does_not_import_jax():
    # Light paths (the CLI's argument checks, a service reading a YAML) load configs without jax;
    # the detector defaults live in the config, so they need no kernel import. (Only a
    # `recommend` section imports the kernels, for the state names its weights are checked against.)
    code = ("import sys, fgjax.config as c; c.load_config(None, ['analysis.alpha=1', 'train.epochs=2']); "
            "print(sorted(m for m in ('jax', 'flax', 'fgjax.kernels') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.stdout.strip() == "[]"


def test_level_section_reaches_the_level_rule():
    # analysis.level.* are the knobs the level rule reads (not the detector's drop-test ratios).
    from conftest import make_log

    from fgjax import kernels
    from fgjax.analysis import analyze

    log = make_log(num_users=12, num_items=16, events_per_user=12, seed=3)
    # User 0 stops after its first five days (the log spans twenty).
    keep = (log.user != 0) | (log.timestamp < log.timestamp.min() + 5 * 86400)
    log = dataclasses.replace(log, user=log.user[keep], item=log.item[keep], timestamp=log.timestamp[keep],
                              weight=log.weight[keep])
    base = ["analysis.detector.kind=level", "analysis.half_life_windows=2"]
    states = {}
    for name, extra in {"default": [],
                        "never_faded": ["analysis.level.forgotten_ratio=0", "analysis.level.declining_ratio=0"],
                        "detector_ratios": ["analysis.detector.fade_share=0.01", "analysis.detector.declining_ratio=0"]
                        }.items():
        states[name] = analyze(load_config(None, base + extra), log, progress=False).state
    assert states["default"][0, 0] == kernels.FORGOTTEN
    assert states["never_faded"][0, 0] == kernels.ACTIVE
    assert not np.isin(states["never_faded"], [kernels.FORGOTTEN, kernels.DECLINING]).any()
    # The detector's ratios do not touch the level rule.
    np.testing.assert_array_equal(states["detector_ratios"], states["default"])
