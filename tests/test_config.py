"""Typed configs: YAML + dotted overrides, clear errors, every configs/ file parses."""

import dataclasses
import math
from pathlib import Path

import pytest

from fgjax.config import Config, from_dict, load_config, parse_override, to_dict
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
