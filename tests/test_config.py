"""Configs: validation names the field and the fix; replace, dict and TOML round trips; presets."""

import dataclasses

import pytest

from crystalline.config import PRESETS, ModelConfig, TrainConfig, load_toml, preset, save_toml
from crystalline.errors import ConfigError


@pytest.mark.parametrize("field, value, message", [
    ("n_embd", 30, "divisible by n_head"),
    ("n_head", 0, "positive"),
    ("n_layer", -1, "positive"),
    ("block_size", 0, "positive"),
    ("vocab_size", 0, "positive"),
    ("n_embd", 2.5, "integer"),
    ("n_layer", "6", "number"),
    ("n_layer", True, "number"),
])
def test_invalid_model_fields(field, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        ModelConfig().replace(**{field: value})
    assert field in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("learning_rate", 0.0), ("min_lr", 1.0), ("min_lr", -1e-4),
    ("warmup_steps", -1), ("max_steps", 0), ("weight_decay", -0.1), ("grad_clip", -1.0),
    ("beta1", 1.0), ("beta2", -0.1), ("eval_interval", -5), ("eval_batches", 0), ("seed", -1),
])
def test_invalid_train_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig().replace(**{field: value})


def test_frozen_replace_and_dict_round_trip():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError, match="n_layer"):
        cfg.n_layer = 3
    small = cfg.replace(n_layer=3)
    assert small.n_layer == 3 and cfg.n_layer == 6
    assert ModelConfig.from_dict(small.to_dict()) == small
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TrainConfig(learning_rate=1).learning_rate == 1.0      # ints accepted for floats
    with pytest.raises(ConfigError, match="no field"):
        cfg.replace(n_layers=3)
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"n_embd": 64, "bias": False})


def test_presets():
    for name in ("tiny", "small", "cllm-4.5m", "shakespeare-char"):
        model_cfg, train_cfg = preset(name)
        assert isinstance(model_cfg, ModelConfig) and isinstance(train_cfg, TrainConfig)
    assert preset("cllm-4.5m")[0] == ModelConfig(vocab_size=256, block_size=128, n_layer=6, n_head=8,
                                                 n_embd=256)
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        preset("huge")
    assert set(PRESETS) == {"tiny", "small", "cllm-4.5m", "shakespeare-char"}


def test_toml_round_trip_and_preset_base(tmp_path):
    path = tmp_path / "run.toml"
    save_toml(path, *preset("small"))
    assert load_toml(path) == preset("small")
    path.write_text('preset = "tiny"\n[train]\nbatch_size = 4\n')
    model_cfg, train_cfg = load_toml(path)
    assert model_cfg == preset("tiny")[0] and train_cfg.batch_size == 4


@pytest.mark.parametrize("text, message", [
    ("[model]\nn_embed = 64\n", "no field"),
    ("[model]\nn_embd = 30\nn_head = 4\n", "divisible"),
    ("[optimizer]\nlr = 1\n", "unknown table"),
    ('preset = "huge"\n', "unknown preset"),
    ("[model\n", "not valid TOML"),
    ("model = 3\n", "must be a \\[model\\] table"),
])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_toml(path)
    assert str(path) in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
