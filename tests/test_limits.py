"""Values that are not finite or too large to represent or allocate: clear errors at the boundary
(config, TOML, CLI; exit 2), and an update that would overflow is never applied."""

import math

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.checkpoint import read_checkpoint
from crystalline.cli import main
from crystalline.config import ModelConfig, TrainConfig, load_toml, preset
from crystalline.errors import ConfigError

MODEL_CFG, TRAIN_CFG = preset("tiny")


@pytest.mark.parametrize("field", ["learning_rate", "min_lr", "weight_decay", "grad_clip", "beta1",
                                   "beta2"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_refuses_non_finite_values(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field} = .* use a finite number"):
        TrainConfig().replace(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", 1e300, "at most 10"),
    ("learning_rate", 11.0, "at most 10"),
    ("weight_decay", 1e301, "at most 1e\\+300"),
    ("weight_decay", 2001.0, "learning_rate \\* weight_decay must be at most 1"),
    ("min_lr", 10**400, "a 401-digit number is too large"),     # int too large for a float
    ("batch_size", 9223372036854775807, "at most 1,048,576"),
    ("batch_size", 1e23, "at most 1,048,576"),
    ("max_steps", 10**13, "at most 1,000,000,000,000"),
    ("eval_batches", 2**21, "at most 1,048,576"),
    ("seed", 2**63, "at most"),
])
def test_train_values_past_their_bounds(field, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        TrainConfig().replace(**{field: value})
    assert field in str(e.value) and len(str(e.value)) < 300


def test_values_at_their_bounds_are_accepted():
    cfg = TrainConfig(learning_rate=10.0, min_lr=1.0, weight_decay=0.1, batch_size=2**20,
                      max_steps=10**12, seed=2**63 - 1)
    assert cfg.learning_rate * cfg.weight_decay == 1.0
    assert ModelConfig(n_layer=1024, n_embd=16, n_head=1, block_size=2**16, vocab_size=256).n_layer == 1024


@pytest.mark.parametrize("changes, message", [
    ({"n_layer": 1e20}, "n_layer = 1e\\+20 is too large: use at most 1,024"),
    ({"n_embd": 2**17}, "at most 65,536"),
    ({"block_size": 10**9}, "at most 65,536"),
    ({"vocab_size": 2**31}, "at most 2,147,483,647"),
    ({"n_layer": math.inf}, "finite"),
    # each field in range, the product not: 2**31 - 1 tokens x 256 channels
    ({"vocab_size": 2**31 - 1}, "parameters; at most 2,147,483,647 fit"),
])
def test_model_values_past_their_bounds(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig().replace(**changes)


def test_parameter_count_matches_the_built_model():
    from crystalline.model.gpt import GPT
    for cfg in (MODEL_CFG, preset("cllm-4.5m")[0]):
        # the model's count includes the layout's alignment padding; the config's does not
        assert 0 <= GPT(cfg).num_parameters - cfg.num_parameters < 16 * 16


@pytest.mark.parametrize("text, message", [
    ("[train]\nlearning_rate = 1e300\n", "learning_rate = 1e\\+300 is too large"),
    ("[train]\nlearning_rate = inf\n", "finite"),
    ("[train]\nweight_decay = inf\n", "finite"),
    ("[train]\nbatch_size = 9223372036854775807\n", "batch_size = 9223372036854775807 is too large"),
    ("[model]\nn_layer = 1e20\n", "n_layer = 1e\\+20 is too large"),
    ('preset = ["tiny"]\n', "preset must be a name"),
    ("preset = 3\n", "preset must be a name"),
])
def test_toml_values_are_refused_with_the_file_named(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_toml(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "inf"], "finite"),
    (["train", "--lr", "nan"], "finite"),
    (["train", "--lr", "1e300"], "too large"),
    (["train", "--batch-size", "1e23"], "invalid int value"),               # argparse's own refusal
    (["train", "--batch-size", "9223372036854775807"], "too large"),
    (["train", "--steps", "10000000000000"], "--steps 10000000000000 is invalid"),
    (["train", "--ckpt-interval", "0"], "--ckpt-interval 0 is invalid"),
    (["train", "--sample", "3000000000"], "--sample 3000000000 is invalid"),
    (["train", "--data", ""], "corpus path is empty"),
    (["train", "--data-changed-ok"], "only applies with --resume"),
    (["sample", "--ckpt", "x.safetensors", "--seed", "-1"], "--seed -1 is invalid"),
    (["sample", "--ckpt", "x.safetensors", "--tokens", "3000000000"], "--tokens 3000000000 is invalid"),
    (["sample", "--ckpt", "x.safetensors", "--temperature", "inf"], "--temperature inf is invalid"),
    (["sample", "--ckpt", "x.safetensors", "--temperature", "nan"], "--temperature nan is invalid"),
    (["sample", "--ckpt", "x.safetensors", "--top-k", "0"], "--top-k 0 is invalid"),
])
def test_cli_refuses_before_writing_anything(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = argv + ["--run-dir", str(tmp_path / "run"), "--no-progress", "--workers", "1"]
    try:
        code = main(argv)
    except SystemExit as e:                       # argparse: usage and one error line, exit 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def overflowing(tr):
    """Set a learning rate and decay past the config's bounds (a frozen field set directly: the
    config would refuse them) so that every float32 constant of the step stays finite (step size
    lr / (1 - beta1) = 3.3e38 with beta1 = 0, decay lr * wd = 3.4e38) while the update of any
    parameter with |p| > about 0.03 whose gradient pushes it further out overflows."""
    object.__setattr__(tr.train_cfg, "learning_rate", 3.3e38)
    object.__setattr__(tr.train_cfg, "weight_decay", 1.03)
    assert tr.optimizer.cfg is tr.train_cfg
    assert np.isfinite(np.float32(3.3e38 / (1 - 0.0))) and np.isfinite(np.float32(3.3e38 * 1.03))


CFG = TRAIN_CFG.replace(batch_size=4, eval_interval=0, warmup_steps=0, beta1=0.0, grad_clip=0.0)


def test_an_update_that_would_overflow_is_skipped_and_parameters_stay_finite(shakespeare):
    with Trainer(MODEL_CFG, CFG.replace(), shakespeare, workers=2) as tr:   # a copy: it is altered
        overflowing(tr)
        seen = {}
        update = tr.optimizer.update

        def spy(grad, step, scale=1.0):
            seen.update(grad=grad.copy(), scale=scale)
            return update(grad, step, scale)
        tr.optimizer.update = spy
        params = tr.model.params.copy()
        result = tr.step()
        # float64 reference of this AdamW step (t = 1, beta1 = 0, no clipping): some parameter
        # leaves the float32 range, though the gradient is finite
        g = seen["grad"].astype(np.float64) * seen["scale"]
        p = params.astype(np.float64)
        v = (1 - CFG.beta2) * g * g
        new = p - 3.3e38 * g / (np.sqrt(v / (1 - CFG.beta2)) + 1e-8) - 3.3e38 * 1.03 * tr.model.decay_mask * p
        assert np.isfinite(g).all() and (np.abs(new) > np.finfo(np.float32).max).any()
        assert result.skipped and np.isfinite(result.grad_norm)
        assert np.array_equal(tr.model.params, params)
        assert not tr.optimizer.m.any() and not tr.optimizer.v.any()     # moments untouched too
        assert tr.optimizer.t == 0 and tr.skipped_steps == 1 and tr.history[0]["skipped"]


def test_saved_parameters_are_finite_after_overflowing_updates(shakespeare, tmp_path):
    with Trainer(MODEL_CFG, CFG.replace(), shakespeare, workers=1) as tr:   # a copy: it is altered
        tr.step()
        overflowing(tr)
        for _ in range(3):
            tr.step()
        tr.save(tmp_path / "c.safetensors")
    tensors, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert all(np.isfinite(t).all() for t in tensors.values())
    assert meta["skipped_steps"] == 3 and meta["adam_t"] == 1 and meta["step"] == 4
