"""precision="bf16": the rounding against a formula written here, the vdpbf16ps GEMM against NumPy
on bf16-rounded inputs, the model against the float64 reference, training against fp32, tree
invariance and determinism, and the errors for a CPU without AVX512-BF16 or an unknown precision.

Tests that run the instruction skip where the CPU lacks it (a failure in CI: see conftest.py)."""

import numpy as np
import pytest

from crystalline.cli import main
from crystalline.config import ModelConfig, TrainConfig, load_toml, preset
from crystalline.errors import ConfigError
from crystalline.model.gpt import GPT
from crystalline.model.kernels.bf16 import MR, NR, gemm_bf16, pack_panels, pack_rows, round_bf16
from crystalline.model.kernels import mkl_bf16
from crystalline.model.kernels.blas import N_, T_
from crystalline.model.precision import GEMM_ENV, HIDE_ENV, cpu_has_bf16

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU lacks avx512_bf16 (vdpbf16ps)")
BF16_MAX = float.fromhex("0x1.fep127")          # largest finite bf16: 0x7f7f
# The bf16 GEMMs here: ours always, MKL's where it is installed (an optional extra: where it is
# not, its cases are not generated, rather than skipped, so CI without it still passes).
PROVIDERS = ["vdpbf16ps"] + (["mkl"] if mkl_bf16.PATH else [])


def bf16_round(x):
    """Round float32 values to bf16 (nearest, ties to even) in float64 arithmetic, from the
    definition: 8 significant bits for normal numbers, a fixed step of 2**-133 below 2**-126,
    inf past the largest finite bf16 value (rounded magnitudes above it overflow)."""
    x = np.asarray(x, np.float64)
    mantissa, exponent = np.frexp(x)                       # x = mantissa * 2**exponent, |m| in [.5, 1)
    step = np.where(np.abs(x) < 2.0**-126, 2.0**-133, np.ldexp(1.0, exponent - 8))
    y = np.rint(x / step) * step                           # np.rint: ties to even
    return np.where(np.abs(y) > BF16_MAX, np.copysign(np.inf, x), y)


def bits_of(values64):
    """The bf16 bits of float64 values that are exactly bf16 (their float32's upper half)."""
    return (np.asarray(values64, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_rounding_is_nearest_even_against_the_formula():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    # ties (low half exactly 0x8000) with even and odd kept bits, and their neighbours
    ties = (rng.integers(0, 2**16, 3000).astype(np.uint32) << 16) | 0x8000
    u = np.concatenate([u, ties, ties - 1, ties + 1, np.uint32([0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000])])
    x = u.view(np.float32)
    finite = np.isfinite(x)
    got = np.empty(x.size, np.uint16)
    round_bf16(got, x, x.size)
    np.testing.assert_array_equal(got[finite], bits_of(bf16_round(x[finite])))
    # ties go to the even neighbour: 1 + 2**-8 (halfway, 1 is even) -> 1; 1 + 3 * 2**-8 -> 1 + 2**-6
    specials = np.float32([1 + 2**-8, 1 + 3 * 2**-8, np.inf, -np.inf, 0.0, -0.0, 3.4e38])
    out = np.empty(specials.size, np.uint16)
    round_bf16(out, specials, specials.size)
    assert list(out) == [0x3F80, 0x3F82, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x7F80]
    # NaN stays NaN (any payload, either sign), quiet, sign kept
    nan = ~finite & ((u & 0x7FFFFF) != 0)
    assert nan.sum() > 0
    nan_bits = got[nan]
    assert np.all((nan_bits & 0x7F80) == 0x7F80) and np.all(nan_bits & 0x0040)
    np.testing.assert_array_equal(nan_bits >> 15, u[nan] >> 31)


def operand(rng, rows, cols, pad):
    """A float32 (rows, cols) operand stored in a larger buffer (offset and row stride)."""
    buf = (rng.standard_normal(pad + rows * (cols + 3)) * 2).astype(np.float32)
    return buf, pad, cols + 3, buf[pad:pad + rows * (cols + 3)].reshape(rows, cols + 3)[:, :cols]


@needs_bf16
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (12, 32, 2), (13, 33, 7), (25, 65, 64), (37, 45, 23),
                                     (100, 96, 130)])
@pytest.mark.parametrize("a_transposed, b_transposed", [(False, False), (True, True)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_matches_numpy_on_rounded_inputs(M, N, K, a_transposed, b_transposed, accumulate):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    a_buf, a_off, lda, a = operand(rng, K, M, 5) if a_transposed else operand(rng, M, K, 5)
    b_buf, b_off, ldb, b = operand(rng, N, K, 3) if b_transposed else operand(rng, K, N, 3)
    A, B = (a.T if a_transposed else a), (b.T if b_transposed else b)        # (M, K), (K, N)
    Kp = (K + 1) // 2
    a_packed = np.full(-(-M // MR) * MR * Kp, 0xFFFFFFFF, np.uint32)       # garbage: packing writes all
    b_packed = np.full(-(-N // NR) * NR * Kp, 0xFFFFFFFF, np.uint32)
    pack_rows(a_packed, a_buf, a_off, lda, M, K, a_transposed)
    pack_panels(b_packed, b_buf, b_off, ldb, K, N, b_transposed)
    ldc = N + 2
    c = rng.standard_normal(M * ldc + 4).astype(np.float32)
    before = c.copy()
    gemm_bf16(c, 4, ldc, a_packed, b_packed, M, N, K, accumulate, np.zeros(MR * NR, np.float32))
    A64, B64 = bf16_round(A), bf16_round(B)
    prior = before[4:].reshape(M, ldc)[:, :N].astype(np.float64) if accumulate else 0.0
    want = prior + A64 @ B64
    got = c[4:].reshape(M, ldc)
    # fp32 summation of K exact products: error <= K * 2**-24 * sum |a b| (plus the prior's add)
    bound = (K + 2) * 2.0**-24 * (np.abs(A64) @ np.abs(B64) + np.abs(prior))
    assert np.all(np.abs(got[:, :N] - want) <= bound + 1e-30)
    np.testing.assert_array_equal(got[:, N:], before[4:].reshape(M, ldc)[:, N:])   # untouched
    np.testing.assert_array_equal(c[:4], before[:4])
    # not the float32 product: the operands really were rounded to bf16 (K >= 7: rounding shows)
    if K >= 7:
        assert np.abs(got[:, :N] - A.astype(np.float64) @ B).max() > 100 * bound.max() / (K + 2)


@needs_bf16
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (13, 33, 7), (100, 96, 130)])
@pytest.mark.parametrize("transa, transb", [(N_, T_), (N_, N_), (T_, N_)])
def test_mkl_gemm_matches_numpy_on_rounded_inputs(M, N, K, transa, transb):
    from crystalline.model.kernels.bf16 import round_bf16
    rng = np.random.default_rng(M + N + K)
    a = rng.standard_normal((K, M) if transa == T_ else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transb == T_ else (K, N)).astype(np.float32)
    a16, b16 = np.zeros(a.size + 3, np.uint16), np.zeros(b.size + 1, np.uint16)
    round_bf16(a16[3:], a, a.size)
    round_bf16(b16[1:], b, b.size)
    c = rng.standard_normal((M, N)).astype(np.float32)
    prior = c.astype(np.float64)
    mkl_bf16.gemm16(transa, transb, M, N, K, a16, 3, a.shape[1], b16, 1, b.shape[1], 1.0, c, 0, N)
    A64 = bf16_round(a.T if transa == T_ else a)
    B64 = bf16_round(b.T if transb == T_ else b)
    bound = (K + 2) * 2.0**-24 * (np.abs(A64) @ np.abs(B64) + np.abs(prior))
    assert np.all(np.abs(c - (prior + A64 @ B64)) <= bound + 1e-30)


if mkl_bf16.PATH is None:     # an optional extra: without it the test does not exist (see PROVIDERS)
    del test_mkl_gemm_matches_numpy_on_rounded_inputs


@needs_bf16
def test_the_kernel_issues_vdpbf16ps():
    from numba import njit
    fresh = njit(nogil=True)(gemm_bf16.py_func)      # cached code cannot be inspected
    c, a, b = np.zeros(MR * NR, np.float32), np.zeros(MR, np.uint32), np.zeros(NR, np.uint32)
    fresh(c, 0, NR, a, b, MR, NR, 2, False, c.copy())
    asm = "".join(fresh.inspect_asm().values())
    assert asm.count("vdpbf16ps") >= MR * NR // 16       # one per accumulator vector


CFG = ModelConfig(vocab_size=67, block_size=13, n_layer=2, n_head=3, n_embd=48)   # tails everywhere


def torch_grads(model, idx, targets):
    torch = pytest.importorskip("torch")
    from test_torch_parity import torch_loss
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
          for k, v in model.param_views().items()}
    loss, _ = torch_loss(tp, model.config, torch.tensor(idx), torch.tensor(targets))
    loss.backward()
    return float(loss.detach()), {k: t.grad.numpy() for k, t in tp.items()}


@needs_bf16
@pytest.mark.parametrize("provider", PROVIDERS)
def test_model_forward_backward_against_the_float64_reference(provider, monkeypatch):
    monkeypatch.setenv(GEMM_ENV, provider)
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 67, (3, 13)), rng.integers(0, 67, (3, 13))
    errors = {}
    for precision in ("fp32", "bf16"):
        model = GPT(CFG, seed=0, precision=precision)
        assert precision == "fp32" or model.bf16_weights.provider == provider
        p = model.param_views()
        for name in p:           # non-trivial LayerNorm gains and biases
            p[name][...] += rng.normal(0, 0.05, p[name].shape).astype(np.float32)
        model.weights_changed()
        loss = model.forward(idx, targets)
        grads = model.param_views(model.backward())
        ref_loss, ref_grads = torch_grads(model, idx, targets)
        worst = max(np.linalg.norm(grads[k] - ref_grads[k]) / np.linalg.norm(ref_grads[k])
                    for k in grads)
        errors[precision] = (abs(loss - ref_loss), worst)
    # bf16 keeps 8 significant bits (relative rounding 2**-9 = 0.2% per operand)
    assert errors["bf16"][0] < 5e-3 and errors["bf16"][1] < 3e-2, errors
    # and bf16 really ran: its error is far above fp32's
    assert errors["bf16"][1] > 20 * errors["fp32"][1], errors


def trainer(workers, precision, steps=0, **train):
    from crystalline.engine.trainer import Trainer
    m, t = preset("tiny")
    tr = Trainer(m, t.replace(precision=precision, eval_interval=0, **train), "data/tinyshakespeare.txt",
                 workers=workers)
    losses = [tr.step().loss for _ in range(steps)]
    return tr, losses


@needs_bf16
def test_training_loss_curve_follows_fp32():
    """30 steps of the tiny preset: each step's loss within 0.01 nats of fp32's."""
    from crystalline.engine.stats import FIELD
    curves, node_zero_bytes = {}, {}
    for precision in ("fp32", "bf16"):
        tr, curves[precision] = trainer(2, precision, 30)
        node_zero_bytes[precision] = tr.stats.row(tr.hierarchy.node_zero.id)[FIELD["bytes"]]
        tr.close()
    # Node Zero owns the bf16 weight copy: at least 2 bytes per matrix weight
    matrices = tr.model.num_parameters - tr.model.param_views()["wpe"].size
    assert node_zero_bytes["bf16"] - node_zero_bytes["fp32"] >= 2 * matrices * 0.9
    fp32, bf16 = np.array(curves["fp32"]), np.array(curves["bf16"])
    assert fp32[-1] < fp32[0] - 1.0                          # it learns
    assert np.abs(bf16 - fp32).max() < 0.01, np.abs(bf16 - fp32)
    assert np.abs(bf16 - fp32).max() > 0                     # and is not the fp32 run


@needs_bf16
@pytest.mark.parametrize("provider", PROVIDERS)
def test_any_tree_equals_one_thread_and_repeats_bitwise(provider, monkeypatch):
    monkeypatch.setenv(GEMM_ENV, provider)
    runs = {}
    for key in ("1", "3", "13", "13 again"):
        tr, _ = trainer(int(key.split()[0]), "bf16", 3, batch_size=13)
        runs[key] = tr.model.params.copy()
        tr.close()
    np.testing.assert_array_equal(runs["13"], runs["13 again"])
    for key in ("3", "13"):
        np.testing.assert_allclose(runs[key], runs["1"], rtol=0, atol=2e-5)


@needs_bf16
@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_step_leaves_the_bf16_copy_equal_to_the_new_parameters_rounded(provider, monkeypatch):
    """AdamW writes (MKL) or packs (our tiles) the copy with the parameters: forwards before and
    after a refresh from scratch agree bitwise; with MKL the copy is the formula's rounding."""
    monkeypatch.setenv(GEMM_ENV, provider)
    tr, _ = trainer(2, "bf16", 3)
    model, rng = tr.model, np.random.default_rng(0)
    idx, targets = (rng.integers(0, model.config.vocab_size, (2, 16)) for _ in range(2))
    after_steps = model.forward(idx, targets)
    if provider == "mkl":
        np.testing.assert_array_equal(model.bf16_weights.buffer, bits_of(bf16_round(model.params)))
    model.weights_changed()
    assert model.forward(idx, targets) == after_steps
    tr.close()


def test_a_cpu_without_avx512_bf16_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv(HIDE_ENV, "1")
    with pytest.raises(ConfigError, match="needs the CPU feature avx512_bf16.*use precision = 'fp32'"):
        GPT(CFG, precision="bf16")
    with pytest.raises(ConfigError, match="avx512_bf16"):
        trainer(1, "bf16")
    assert main(["train", "--preset", "tiny", "--steps", "1", "--precision", "bf16",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "avx512_bf16" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    tr, losses = trainer(1, "fp32", 1)          # fp32 is unchanged
    tr.close()
    assert np.isfinite(losses[0])


def test_an_unknown_precision_is_refused_at_the_boundary(tmp_path, capsys):
    for bad in ("fp16", "BF16", ""):
        with pytest.raises(ConfigError, match="TrainConfig.precision .* use \"fp32\" or \"bf16\""):
            TrainConfig(precision=bad)
    with pytest.raises(ConfigError, match="TrainConfig.precision must be a string"):
        TrainConfig(precision=16)
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nprecision = "fp8"\n')
    with pytest.raises(ConfigError, match="precision"):
        load_toml(toml)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--precision", "fp16"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="precision = 'int8' is not a precision"):
        GPT(CFG, precision="int8")


@needs_bf16
def test_a_checkpoint_carries_its_precision_and_a_resume_cannot_change_it(tmp_path, capsys):
    from crystalline.checkpoint import read_checkpoint
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--workers", "1", "--precision", "bf16",
                 "--run-dir", str(run), "--no-progress", "--sample", "0"]) == 0
    ckpt = run / "checkpoint.safetensors"
    assert read_checkpoint(ckpt)[1]["train_config"]["precision"] == "bf16"
    assert main(["train", "--resume", str(ckpt), "--steps", "1", "--precision", "fp32",
                 "--no-progress", "--sample", "0"]) == 2
    assert "--precision fp32 cannot change a resumed run (precision = bf16" in capsys.readouterr().err
    assert main(["train", "--resume", str(ckpt), "--steps", "1", "--no-progress", "--sample", "0"]) == 0
    assert read_checkpoint(ckpt)[1]["train_config"]["precision"] == "bf16"


@needs_bf16
def test_the_gemm_choice_is_checked(monkeypatch):
    monkeypatch.setenv(GEMM_ENV, "cublas")
    with pytest.raises(ConfigError, match="CRYSTALLINE_BF16_GEMM='cublas' is not a bf16 GEMM"):
        GPT(CFG, precision="bf16")
    monkeypatch.setattr(mkl_bf16, "PATH", None)           # as on a machine without MKL
    monkeypatch.setenv(GEMM_ENV, "mkl")
    with pytest.raises(ConfigError, match="MKL is not installed"):
        GPT(CFG, precision="bf16")
    monkeypatch.delenv(GEMM_ENV)
    assert GPT(CFG, precision="bf16").bf16_weights.provider == "vdpbf16ps"


@needs_bf16
def test_bf16_refuses_parameters_other_than_the_models_own():
    """The bf16 copy is of model.params: a forward on another vector would silently use stale
    weights, so it is refused, naming both ways out."""
    model = GPT(CFG, seed=0, precision="bf16")
    idx = np.zeros((1, 4), np.int64)
    with pytest.raises(ConfigError) as err:
        model.forward_into(model.workspace(1), idx, params=model.params.copy())
    assert str(err.value) == ("precision='bf16' reads the bf16 copy of model.params; pass "
                              "params=None, or copy the values into model.params and call "
                              "model.weights_changed()")


@needs_bf16
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bf16_workspace_counts_its_packing_buffers(provider, monkeypatch):
    """nbytes = the float32 activations + the bf16 packing buffers (MKL: the layer input, N x 4C,
    and the output gradient, N x the widest output, as uint16)."""
    monkeypatch.setenv(GEMM_ENV, provider)
    B, T, C, V = 3, CFG.block_size, CFG.n_embd, CFG.vocab_size
    fp32 = GPT(CFG, seed=0).workspace(B)
    bf16 = GPT(CFG, seed=0, precision="bf16").workspace(B)
    assert fp32.nbytes == fp32.buffer.nbytes and bf16.buffer.nbytes == fp32.buffer.nbytes
    extra = bf16.nbytes - fp32.nbytes
    if provider == "mkl":
        assert extra == 2 * (B * T * 4 * C + B * T * max(4 * C, V))
    else:
        assert extra > 2 * B * T * 4 * C               # at least one packed copy of the MLP input
