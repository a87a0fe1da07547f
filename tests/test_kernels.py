"""Each kernel against its float64 NumPy reference (tests/reference.py); each backward against
float64 central finite differences of the reference forward with loss = (out * dout).sum()."""

import math
import os
import pathlib
import re

import numpy as np
import pytest

import reference as ref
from crystalline.model.kernels.adamw import adamw_step
from crystalline.model.kernels.clip import grad_norm, scale_
from crystalline.model.kernels.crossentropy import crossentropy_backward, crossentropy_forward
from crystalline.model.kernels.encoder import encoder_backward, encoder_forward
from crystalline.model.kernels.gelu import (gelu_backward, gelu_backward_from_grad, gelu_forward,
                                            gelu_forward_and_grad, tanh_rational)
from crystalline.model.kernels.layernorm import layernorm_backward, layernorm_forward
from crystalline.model.kernels.matmul import matmul_backward, matmul_forward
from crystalline.model.kernels.residual import residual_backward, residual_forward

B, T, C = 2, 3, 4
N = B * T
rng = np.random.default_rng(1234)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def fd_grad(f, x, h=1e-6):
    """Central finite differences of scalar f at float64 copy of x."""
    x = x.astype(np.float64).copy()
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = f(x)
        x[i] = old - h
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def close(analytic, numeric, rtol=1e-4):
    scale = max(np.abs(numeric).max(), 1e-6)
    err = np.abs(analytic.astype(np.float64) - numeric).max() / scale
    assert err < rtol, f"relative error {err:.2e}"


def d(x):
    return x.astype(np.float64)


def test_encoder():
    V = 5
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    wte, wpe, dout = f32(V, C), f32(T, C), f32(N, C)
    out = np.zeros((N, C), np.float32)
    encoder_forward(out, idx, wte, wpe, B, T, C)
    np.testing.assert_allclose(out, ref.encoder(idx, d(wte), d(wpe)), rtol=1e-6)
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    encoder_backward(dwte, dwpe, dout, idx, B, T, C)
    close(dwte, fd_grad(lambda w: (ref.encoder(idx, w, d(wpe)) * dout).sum(), wte))
    close(dwpe, fd_grad(lambda w: (ref.encoder(idx, d(wte), w) * dout).sum(), wpe))


def test_layernorm():
    x, w, b, dout = f32(N, C), f32(C), f32(C), f32(N, C)
    out, mean, rstd = np.zeros((N, C), np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32)
    layernorm_forward(out, mean, rstd, x, w, b, N, C)
    np.testing.assert_allclose(out, ref.layernorm(d(x), d(w), d(b)), rtol=1e-5, atol=1e-5)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    dx += 0.5  # backward accumulates
    layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C)
    close(dx - 0.5, fd_grad(lambda v: (ref.layernorm(v, d(w), d(b)) * dout).sum(), x))
    close(dw, fd_grad(lambda v: (ref.layernorm(d(x), v, d(b)) * dout).sum(), w))
    close(db, fd_grad(lambda v: (ref.layernorm(d(x), d(w), v) * dout).sum(), b))


@pytest.mark.parametrize("bias", [True, False])
def test_matmul(bias):
    OC = 5
    x, w, dout = f32(N, C), f32(OC, C), f32(N, OC)
    b = f32(OC) if bias else np.zeros(0, np.float32)
    out = np.zeros((N, OC), np.float32)
    matmul_forward(out, x, w, b, N, C, OC)
    np.testing.assert_allclose(out, ref.matmul(d(x), d(w), d(b) if bias else None), rtol=1e-5, atol=1e-5)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    matmul_backward(dx, dw, db, dout, x, w, N, C, OC)
    bb = d(b) if bias else None
    close(dx, fd_grad(lambda v: (ref.matmul(v, d(w), bb) * dout).sum(), x))
    close(dw, fd_grad(lambda v: (ref.matmul(d(x), v, bb) * dout).sum(), w))
    if bias:
        close(db, fd_grad(lambda v: (ref.matmul(d(x), d(w), v) * dout).sum(), b))


def test_tanh_rational_matches_numpy():
    x = np.concatenate([np.linspace(-12, 12, 200001), [0.0, 1e-8, -1e-8, 1e-3, 20.0, -20.0]])
    got = np.array([tanh_rational(v) for v in x[::97]])
    np.testing.assert_allclose(got, np.tanh(x[::97]), rtol=0, atol=4e-7)


def test_gelu():
    n = 4000
    x, dout = np.linspace(-9, 9, n).astype(np.float32), f32(n)
    out = np.zeros(n, np.float32)
    gelu_forward(out, x, n)
    np.testing.assert_allclose(out, ref.gelu(d(x)), rtol=0, atol=2e-6)
    x, dout = f32(N * C, scale=2.0), f32(N * C)
    dx = np.zeros_like(x)
    gelu_backward(dx, x, dout, N * C)
    close(dx, fd_grad(lambda v: (ref.gelu(v) * dout).sum(), x))


def test_gelu_vector_loop_is_bitwise_its_scalar_tail():
    """gelu_vec.py's 16-lane loop and the scalar code of the n % 16 tail give the same bits."""
    body = f32(32, scale=3.0)
    x = np.concatenate([body, body[:15]])                    # n = 47: the tail repeats the body
    out, grad = np.zeros_like(x), np.zeros_like(x)
    gelu_forward(out, x, x.size)
    np.testing.assert_array_equal(out[32:], out[:15])
    out[:] = 0.0
    gelu_forward_and_grad(out, grad, x, x.size)
    np.testing.assert_array_equal(out[32:], out[:15])
    np.testing.assert_array_equal(grad[32:], grad[:15])


def test_gelu_with_its_derivative():
    """The model's pair: gelu(x) and gelu'(x) from one pass (into a buffer of its own or in place
    of x, which stays untouched in the first case), then the backward multiplies (in place too)."""
    x, dout = f32(N * C, scale=2.0), f32(N * C)
    numeric = fd_grad(lambda v: (ref.gelu(v) * dout).sum(), x)
    out, grad, x_before = np.zeros_like(x), np.full_like(x, np.nan), x.copy()
    gelu_forward_and_grad(out, grad, x, N * C)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_allclose(out, ref.gelu(d(x)), rtol=0, atol=2e-6)
    dx = np.full_like(x, np.nan)                          # overwritten, not accumulated
    gelu_backward_from_grad(dx, grad, dout, N * C)
    close(dx, numeric)
    kept = x.copy()
    gelu_forward_and_grad(out, kept, kept, N * C)
    gelu_backward_from_grad(kept, kept, dout, N * C)
    close(kept, numeric)


def test_matmul_backward_overwriting_dinp():
    OC = 5
    x, w, dout, b = f32(N, C), f32(OC, C), f32(N, OC), f32(OC)
    dx, dw, db = np.full_like(x, np.nan), np.zeros_like(w), np.zeros_like(b)
    matmul_backward(dx, dw, db, dout, x, w, N, C, OC, 0.0)
    close(dx, fd_grad(lambda v: (ref.matmul(v, d(w), d(b)) * dout).sum(), x))
    close(dw, fd_grad(lambda v: (ref.matmul(d(x), v, d(b)) * dout).sum(), w))


def test_residual():
    a, b, dout = f32(N * C), f32(N * C), f32(N * C)
    out = np.zeros_like(a)
    residual_forward(out, a, b, N * C)
    np.testing.assert_array_equal(out, a + b)
    da, db = np.ones_like(a), np.zeros_like(b)
    residual_backward(da, db, dout, N * C)
    close(da - 1, fd_grad(lambda v: (ref.residual(v, d(b)) * dout).sum(), a))
    close(db, fd_grad(lambda v: (ref.residual(d(a), v) * dout).sum(), b))


def test_crossentropy():
    V = 7
    logits, targets = f32(N, V, scale=3.0), rng.integers(0, V, N).astype(np.int32)
    probs, losses = np.zeros((N, V), np.float32), np.zeros(N, np.float32)
    total = crossentropy_forward(probs, losses, logits, targets, N, V)
    rl, rp = ref.crossentropy(d(logits), targets)
    np.testing.assert_allclose(losses, rl, rtol=1e-5)
    np.testing.assert_allclose(probs, rp, rtol=1e-5, atol=1e-7)
    assert abs(total - rl.sum()) < 1e-4
    dlogits = np.zeros_like(logits)
    crossentropy_backward(dlogits, probs, targets, 0.25, N, V)
    close(dlogits, fd_grad(lambda v: 0.25 * ref.crossentropy(v, targets)[0].sum(), logits))


def test_adamw_matches_reference_over_steps():
    n = 1000
    p, m, v = f32(n), np.zeros(n, np.float32), np.zeros(n, np.float32)
    mask = (rng.random(n) < 0.5).astype(np.float32)
    rp, rm, rv = d(p), d(m), d(v)
    for t in range(1, 6):
        g = f32(n)
        adamw_step(p, g, m, v, mask, 1e-2, 0.9, 0.95, 1e-8, 0.1, t)
        rp, rm, rv = ref.adamw(rp, d(g), rm, rv, d(mask), 1e-2, 0.9, 0.95, 1e-8, 0.1, t)
    np.testing.assert_allclose(p, rp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, rm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n", [0, 1, 7, 100003])
def test_grad_norm_and_scale(n):
    g = f32(n)
    assert grad_norm(g) == pytest.approx(np.linalg.norm(d(g)), rel=1e-12, abs=1e-12)
    want = g * np.float32(0.5)
    scale_(g, 0.5)
    np.testing.assert_array_equal(g, want)


def test_no_stray_fastmath():
    """FASTMATH in crystalline.config is the only switch (stumpy's rule)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "crystalline"
    strays = [str(f) for f in root.rglob("*.py") if re.search(r"fastmath\s*=\s*(True|\{)", f.read_text())]
    assert strays == []
    for f in (root / "model" / "kernels").glob("*.py"):
        text = f.read_text()
        assert "parallel=True" not in text, f
        for m in re.finditer(r"@njit\(([^)]*)\)", text):
            assert "nogil=True" in m.group(1) and "fastmath=FASTMATH" in m.group(1), (f, m.group(0))


def test_exp_nonpos_matches_numpy():
    from crystalline.model.kernels.softmax import exp_nonpos
    x = np.concatenate([-np.geomspace(1e-9, 80, 3000), [0.0, -87.0, -200.0, -np.inf]])
    got = np.array([exp_nonpos(v) for v in x])
    np.testing.assert_allclose(got[:-3], np.exp(x[:-3]), rtol=1e-9)
    # clamped at exp(-80): a probability of (almost) zero, never negative, never NaN
    np.testing.assert_allclose(got[-3:], np.exp(-80.0), rtol=1e-9)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 256])
def test_simd_reductions_and_exp32(n):
    """simd.py's vector reductions against float64 NumPy, at offsets inside a 2-D array."""
    from numba import njit
    from crystalline.model.kernels.simd import exp32, vdot, vdot3, vmax, vsum

    @njit
    def run(x, y, z, off, n):
        return (vsum(x, off, n), vdot(x, off, y, off + 1, n), vdot3(x, off, y, off, z, off + 2, n),
                vmax(x, off, n))

    x, y, z = f32(4, 130), f32(4, 130), f32(4, 130)
    off = 3
    a, b, c = (v.reshape(-1).astype(np.float64) for v in (x, y, z))
    s, dt, dt3, mx = run(x, y, z, off, n)
    assert s == pytest.approx(a[off:off + n].sum(), rel=1e-12, abs=1e-12)
    assert dt == pytest.approx((a[off:off + n] * b[off + 1:off + 1 + n]).sum(), rel=1e-12, abs=1e-12)
    assert dt3 == pytest.approx((a[off:off + n] * b[off:off + n] * c[off + 2:off + 2 + n]).sum(),
                                rel=1e-12, abs=1e-12)
    assert mx == a[off:off + n].max()
    e = np.array([exp32(v) for v in -np.geomspace(1e-6, 80, 50).astype(np.float32)])
    np.testing.assert_allclose(e, np.exp(-np.geomspace(1e-6, 80, 50).astype(np.float32).astype(np.float64)),
                               rtol=3e-7)


def test_matmul_backward_overwriting_dweight():
    OC = 5
    x, w, dout, b = f32(N, C), f32(OC, C), f32(N, OC), f32(OC)
    dx, dw, db = np.zeros_like(x), np.full_like(w, np.nan), np.zeros_like(b)
    matmul_backward(dx, dw, db, dout, x, w, N, C, OC, 1.0, 0.0)
    close(dw, fd_grad(lambda v: (ref.matmul(d(x), v, d(b)) * dout).sum(), w))
    close(dx, fd_grad(lambda v: (ref.matmul(v, d(w), d(b)) * dout).sum(), x))


def _sgemm_address(provider):
    from crystalline.model.kernels import blas
    found = {"bound": lambda: (blas._ADDRESS,), "mkl": blas._mkl_sgemm,
             "openblas": blas._ilp64_openblas_sgemm, "numba shim": blas._numba_blas_shim}[provider]()
    if found is None:
        pytest.skip(f"no {provider} sgemm in this environment")
    return found[0]


@pytest.mark.parametrize("provider", ["bound", "mkl", "openblas", "numba shim"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_sgemm_providers_compute_row_major_products_with_strides(provider, ta, tb):
    """Every way blas.py can bind crystalline_cblas_sgemm: C = 2 op(A) op(B) + 0.5 C on row
    slices of wider arrays (leading dimensions larger than the columns used)."""
    import ctypes

    from crystalline.model.kernels import blas
    address = _sgemm_address(provider)
    i64, cf, fp = ctypes.c_int64, ctypes.c_float, ctypes.POINTER(ctypes.c_float)
    sgemm = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, cf,
                             fp, i64, fp, i64, cf, fp, i64)(address)
    M, N, K = 5, 7, 3
    A = f32(*((K, M + 2) if ta else (M, K + 2)))
    B, Cm = f32(*((N, K + 1) if tb else (K, N + 1))), f32(M, N + 3)
    a = A[:, :M].T if ta else A[:, :K]
    b = B[:, :K].T if tb else B[:, :N]
    expected = 2 * d(a) @ d(b) + 0.5 * d(Cm[:, :N])
    ptr = lambda x: x.ctypes.data_as(fp)  # noqa: E731
    sgemm(blas.ROW_MAJOR, blas.T_ if ta else blas.N_, blas.T_ if tb else blas.N_, M, N, K, 2.0,
          ptr(A), A.shape[1], ptr(B), B.shape[1], 0.5, ptr(Cm), Cm.shape[1])
    np.testing.assert_allclose(Cm[:, :N], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("choice, provider", [("openblas", "OpenBLAS"), ("mkl", "MKL"),
                                              ("", None), ("cublas", "is not an sgemm")])
def test_the_sgemm_choice_is_made_at_import_and_checked(choice, provider):
    """CRYSTALLINE_SGEMM picks the float32 GEMM (MKL by default where installed); a name that is
    no sgemm, or MKL where it is missing, is an error naming the variable."""
    import subprocess
    import sys

    from crystalline.model.kernels import mkl_bf16
    if choice == "mkl" and mkl_bf16.PATH is None:
        provider = "MKL is not installed"
    if choice == "" and provider is None:
        provider = "MKL" if mkl_bf16.PATH else "OpenBLAS"
    run = subprocess.run([sys.executable, "-c", "from crystalline.model.kernels import blas; "
                          "print(blas.PROVIDER)"], capture_output=True, text=True,
                         env={**os.environ, "CRYSTALLINE_SGEMM": choice})
    if "not" in provider:
        assert run.returncode != 0 and "CRYSTALLINE_SGEMM" in run.stderr
        assert provider in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(provider)


def test_adamw_grad_scale_equals_scaling_the_gradient_first():
    P, scale = 1000, 1.0 / 3072
    p, g, m, v = f32(P), f32(P), f32(P, scale=0.1), np.abs(f32(P, scale=0.1))
    mask = (np.arange(P) % 3 == 0).astype(np.float32)
    p1, m1, v1, g1 = p.copy(), m.copy(), v.copy(), g.copy()
    scale_(g1, scale)
    adamw_step(p1, g1, m1, v1, mask, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    g2 = g.copy()
    adamw_step(p, g2, m, v, mask, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3, scale)
    np.testing.assert_array_equal(p, p1)
    np.testing.assert_array_equal(m, m1)
    np.testing.assert_array_equal(v, v1)
    np.testing.assert_array_equal(g2, g)             # the gradient itself is left as it was


@pytest.mark.parametrize("accumulate", [False, True])
def test_register_tiles_transpose_and_copy_against_numpy(accumulate):
    from numba import njit
    from crystalline.model.kernels.tile import copy16, tile4x16, tile4x32, transpose16

    @njit
    def run(c16, c32, a, b, t, src, cp):
        # a read along rows for the 4 x 16 tile, down columns (a transposed operand) for 4 x 32
        tile4x16(c16, 3, 20, a, 2, 11, 1, b, 1, 40, 7, accumulate)
        tile4x32(c32, 0, 33, a, 5, 1, 11, b, 4, 40, 6, accumulate)
        transpose16(t, 2, 18, src, 19, 17, np.float32(0.5))
        copy16(cp, 1, src, 30)

    a, b, src = f32(8, 11), f32(9, 40), f32(20, 17)
    c16, c32 = f32(5, 20), f32(4, 33)
    t, cp = np.zeros((17, 18), np.float32), np.zeros(20, np.float32)
    want16 = a.reshape(-1)[2:][np.arange(4)[:, None] * 11 + np.arange(7)] @ b.reshape(-1)[1:][np.arange(7)[:, None] * 40 + np.arange(16)]
    want32 = a.reshape(-1)[5:][np.arange(4)[:, None] + 11 * np.arange(6)] @ b.reshape(-1)[4:][np.arange(6)[:, None] * 40 + np.arange(32)]
    old16, old32 = c16.reshape(-1)[3:3 + 4 * 20].reshape(4, 20)[:, :16].copy(), c32[:, :32].copy()
    run(c16, c32, a, b, t, src, cp)
    got16 = c16.reshape(-1)[3:3 + 4 * 20].reshape(4, 20)[:, :16]
    np.testing.assert_allclose(got16, want16 + (old16 if accumulate else 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c32[:, :32], want32 + (old32 if accumulate else 0), rtol=1e-5, atol=1e-5)
    block = 0.5 * src.reshape(-1)[19:][np.arange(16)[:, None] * 17 + np.arange(16)]
    np.testing.assert_array_equal(t.reshape(-1)[2:][np.arange(16)[:, None] * 18 + np.arange(16)], block.T)
    assert np.count_nonzero(t) == 256
    np.testing.assert_array_equal(cp[1:17], src.reshape(-1)[30:46])
    assert cp[0] == 0 and cp[17:].tolist() == [0, 0, 0]


# ---- widths that enter the 16-lane vector loops: whole vectors (16, 48) and a tail (19) ------

WIDTHS = [16, 19, 48]


@pytest.mark.parametrize("C_", WIDTHS)
def test_layernorm_at_vector_widths(C_):
    x, w, b, dout = f32(N, C_, scale=2.0), f32(C_), f32(C_), f32(N, C_)
    out, mean, rstd = np.zeros((N, C_), np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32)
    layernorm_forward(out, mean, rstd, x, w, b, N, C_)
    np.testing.assert_allclose(out, ref.layernorm(d(x), d(w), d(b)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, d(x).mean(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(d(x).var(-1) + 1e-5), rtol=1e-5)
    dx, dw, db = np.full_like(x, 0.5), np.full_like(w, 0.25), np.zeros_like(b)
    layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C_)
    close(dx - 0.5, fd_grad(lambda v: (ref.layernorm(v, d(w), d(b)) * dout).sum(), x))
    close(dw - 0.25, fd_grad(lambda v: (ref.layernorm(d(x), v, d(b)) * dout).sum(), w))
    close(db, fd_grad(lambda v: (ref.layernorm(d(x), d(w), v) * dout).sum(), b))


@pytest.mark.parametrize("C_", WIDTHS)
def test_matmul_at_vector_widths(C_):
    OC = C_ + 3
    x, w, b, dout = f32(N, C_), f32(OC, C_), f32(OC), f32(N, OC)
    out = np.zeros((N, OC), np.float32)
    matmul_forward(out, x, w, b, N, C_, OC)
    np.testing.assert_allclose(out, ref.matmul(d(x), d(w), d(b)), rtol=1e-5, atol=1e-5)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    matmul_backward(dx, dw, db, dout, x, w, N, C_, OC)
    close(dx, fd_grad(lambda v: (ref.matmul(v, d(w), d(b)) * dout).sum(), x))
    close(dw, fd_grad(lambda v: (ref.matmul(d(x), v, d(b)) * dout).sum(), w))
    close(db, fd_grad(lambda v: (ref.matmul(d(x), d(w), v) * dout).sum(), b))


@pytest.mark.parametrize("C_", WIDTHS)
def test_encoder_and_residual_at_vector_widths(C_):
    V = 7
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    wte, wpe, dout = f32(V, C_), f32(T, C_), f32(N, C_)
    out = np.zeros((N, C_), np.float32)
    encoder_forward(out, idx, wte, wpe, B, T, C_)
    np.testing.assert_allclose(out, ref.encoder(idx, d(wte), d(wpe)), rtol=1e-6)
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    encoder_backward(dwte, dwpe, dout, idx, B, T, C_)
    close(dwte, fd_grad(lambda v: (ref.encoder(idx, v, d(wpe)) * dout).sum(), wte))
    close(dwpe, fd_grad(lambda v: (ref.encoder(idx, d(wte), v) * dout).sum(), wpe))
    a, b2, dres = f32(N * C_), f32(N * C_), f32(N * C_)
    res = np.zeros_like(a)
    residual_forward(res, a, b2, N * C_)
    np.testing.assert_array_equal(res, a + b2)
    da, db = np.ones_like(a), np.zeros_like(b2)
    residual_backward(da, db, dres, N * C_)
    np.testing.assert_array_equal(da, np.float32(1) + dres)
    np.testing.assert_array_equal(db, dres)


@pytest.mark.parametrize("C_", WIDTHS)
def test_gelu_at_vector_widths(C_):
    n = N * C_
    x, dout = f32(n, scale=2.0), f32(n)
    out, kept = np.zeros_like(x), x.copy()
    gelu_forward(out, x, n)
    np.testing.assert_allclose(out, ref.gelu(d(x)), rtol=0, atol=2e-6)
    gelu_forward_and_grad(out, kept, kept, n)
    np.testing.assert_allclose(out, ref.gelu(d(x)), rtol=0, atol=2e-6)
    numeric = fd_grad(lambda v: (ref.gelu(v) * dout).sum(), x)
    dx = np.zeros_like(x)
    gelu_backward(dx, x, dout, n)
    close(dx, numeric)
    dx = np.full_like(x, np.nan)
    gelu_backward_from_grad(dx, kept, dout, n)
    close(dx, numeric)


@pytest.mark.parametrize("V", WIDTHS)
def test_crossentropy_at_vector_widths(V):
    logits, targets = f32(N, V, scale=3.0), rng.integers(0, V, N).astype(np.int32)
    probs, losses = np.zeros((N, V), np.float32), np.zeros(N, np.float32)
    total = crossentropy_forward(probs, losses, logits, targets, N, V)
    rl, rp = ref.crossentropy(d(logits), targets)
    np.testing.assert_allclose(losses, rl, rtol=1e-5)
    np.testing.assert_allclose(probs, rp, rtol=1e-5, atol=1e-7)
    assert total == pytest.approx(rl.sum(), rel=1e-5)
    dlogits = np.zeros_like(logits)
    crossentropy_backward(dlogits, probs, targets, 0.25, N, V)
    close(dlogits, fd_grad(lambda v: 0.25 * ref.crossentropy(v, targets)[0].sum(), logits))


@pytest.mark.parametrize("n", [16, 19, 48, 1003])
def test_adamw_at_vector_widths(n):
    p, m, v = f32(n), np.zeros(n, np.float32), np.zeros(n, np.float32)
    mask = (rng.random(n) < 0.5).astype(np.float32)
    rp, rm, rv = d(p), d(m), d(v)
    for t in range(1, 4):
        g = f32(n)
        adamw_step(p, g, m, v, mask, 1e-2, 0.9, 0.95, 1e-8, 0.5, t)
        rp, rm, rv = ref.adamw(rp, d(g), rm, rv, d(mask), 1e-2, 0.9, 0.95, 1e-8, 0.5, t)
    np.testing.assert_allclose(p, rp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-9)
