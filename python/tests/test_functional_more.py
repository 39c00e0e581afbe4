"""rms_norm, group_norm, weight_norm and the BatchNorm variants' kernels on
NumPy arrays: forward against plain NumPy float64 definitions, backward against
central differences, empty batches, NaN and the errors. With torch installed,
against torch's own functions too. Needs only numpy and pytest."""

import numpy as np
import pytest

import normlab
from test_functional import numeric_grad

rng = np.random.default_rng(1)


def rms_ref(x, k, w, eps):
    axes = tuple(range(x.ndim - k, x.ndim))
    rstd = 1 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rstd
    return (y * w if w is not None else y), rstd


def gn_ref(x, G, w, b, eps):
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)
    mean = xg.mean(axis=2)
    var = xg.var(axis=2)
    y = ((xg - mean[:, :, None]) / np.sqrt(var[:, :, None] + eps)).reshape(x.shape)
    shape = (1, C) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y, mean, 1 / np.sqrt(var + eps)


def wn_ref(v, g, dim):
    if dim == -1:
        return g.reshape(()) * v / np.sqrt((v * v).sum())
    axes = tuple(a for a in range(v.ndim) if a != dim % v.ndim)
    return g * v / np.sqrt((v * v).sum(axis=axes, keepdims=True))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_forward(dtype, tol, with_weight, eps):
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(dtype)
    w = rng.standard_normal((5, 6)).astype(dtype) if with_weight else None
    y, rstd = normlab.native_rms_norm(x, (5, 6), w, eps)
    e = np.finfo(dtype).eps if eps is None else eps
    yr, rr = rms_ref(x.astype(np.float64), 2, w, e)
    assert y.dtype == dtype and rstd.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol)
    np.testing.assert_allclose(rstd, rr, rtol=tol)
    np.testing.assert_array_equal(normlab.rms_norm(x, (5, 6), w, eps), y)


@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_backward_gradcheck(with_weight):
    x = rng.standard_normal((4, 7))
    w = rng.standard_normal(7) if with_weight else None
    g = rng.standard_normal((4, 7))
    arrays = [x, w]
    f = lambda: (normlab.rms_norm(x, 7, w, 1e-5) * g).sum()  # noqa: E731
    _, rstd = normlab.native_rms_norm(x, 7, w, 1e-5)
    dx, dw = normlab.native_rms_norm_backward(g, x, 7, rstd, w, (True, True))
    np.testing.assert_allclose(dx, numeric_grad(f, arrays, 0), rtol=1e-6, atol=1e-8)
    if with_weight:
        np.testing.assert_allclose(dw, numeric_grad(f, arrays, 1), rtol=1e-6, atol=1e-8)
    else:
        assert dw is None


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape,G", [((4, 6), 3), ((3, 6, 5), 2), ((2, 8, 3, 4), 8), ((2, 4, 3), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_forward(dtype, tol, shape, G, affine):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    C = shape[1]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    y = normlab.group_norm(x, G, w, b, 1e-5)
    N, HxW = shape[0], x.size // (shape[0] * C)
    _, mean, rstd = normlab.native_group_norm(x, w, b, N, C, HxW, G, 1e-5)
    yr, mr, rr = gn_ref(x.astype(np.float64), G, w, b, 1e-5)
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol)
    assert mean.shape == (N, G) and rstd.shape == (N, G)
    np.testing.assert_allclose(mean, mr, rtol=tol, atol=tol)
    np.testing.assert_allclose(rstd, rr, rtol=tol * 10)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_backward_gradcheck(affine):
    x = rng.standard_normal((3, 6, 4))
    w = rng.standard_normal(6) if affine else None
    b = rng.standard_normal(6) if affine else None
    g = rng.standard_normal(x.shape)
    arrays = [x, w, b]
    f = lambda: (normlab.group_norm(x, 2, w, b, 1e-5) * g).sum()  # noqa: E731
    _, mean, rstd = normlab.native_group_norm(x, w, b, 3, 6, 4, 2, 1e-5)
    dx, dw, db = normlab.native_group_norm_backward(g, x, mean, rstd, w, 3, 6, 4, 2,
                                                    (True, affine, affine))
    np.testing.assert_allclose(dx, numeric_grad(f, arrays, 0), rtol=1e-6, atol=1e-8)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(f, arrays, 1), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(db, numeric_grad(f, arrays, 2), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape,dim", [((5, 7), 0), ((5, 7), 1), ((5, 7), -1), ((4, 3, 2), 0),
                                       ((4, 3, 2), 2), ((6,), 0)])
def test_weight_norm_forward_and_backward(dtype, tol, shape, dim):
    v = rng.standard_normal(shape).astype(dtype)
    gshape = () if dim == -1 else tuple(s if a == dim else 1 for a, s in enumerate(shape))
    g = rng.standard_normal(gshape).astype(dtype)
    w, norms = normlab.weight_norm_interface(v, g, dim)
    np.testing.assert_allclose(w, wn_ref(v.astype(np.float64), g, dim), rtol=tol, atol=tol)
    assert norms.shape == gshape
    np.testing.assert_array_equal(normlab.weight_norm(v, g, dim), w)
    if dtype == np.float64:
        gw = rng.standard_normal(shape)
        dv, dg = normlab.weight_norm_interface_backward(gw, v, g, norms, dim)
        arrays = [v, g]
        f = lambda: (normlab.weight_norm(v, g, dim) * gw).sum()  # noqa: E731
        np.testing.assert_allclose(dv, numeric_grad(f, arrays, 0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(dg, numeric_grad(f, arrays, 1), rtol=1e-6, atol=1e-8)
        assert dg.shape == gshape


def test_batch_renorm_matches_definition_and_gradcheck():
    x = rng.standard_normal((8, 3, 2)) * 2 + 1
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3) * 0.1, rng.uniform(0.5, 2, 3)
    y, mean, rstd, var, r, d = normlab.native_batch_renorm(x, w, b, rm, rv, 3.0, 5.0, 1e-5)
    m, vb = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    sigma = np.sqrt(rv + 1e-5)
    r_ref = np.clip(np.sqrt(vb + 1e-5) / sigma, 1 / 3, 3)
    d_ref = np.clip((m - rm) / sigma, -5, 5)
    c = lambda t: t.reshape(1, 3, 1)  # noqa: E731
    y_ref = c(w) * ((x - c(m)) / np.sqrt(c(vb) + 1e-5) * c(r_ref) + c(d_ref)) + c(b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r, r_ref, rtol=1e-12)
    np.testing.assert_allclose(var, vb, rtol=1e-12)
    g = rng.standard_normal(x.shape)
    dx, dw, db = normlab.native_batch_renorm_backward(g, x, w, mean, rstd, r, d)

    def f():  # r and d held constant, as the paper's stop_gradient
        mm, vv = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
        out = c(w) * ((x - c(mm)) / np.sqrt(c(vv) + 1e-5) * c(r) + c(d)) + c(b)
        return (out * g).sum()

    arrays = [x, w, b]
    np.testing.assert_allclose(dx, numeric_grad(f, arrays, 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, arrays, 1), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numeric_grad(f, arrays, 2), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("training", [True, False])
def test_mean_only_batch_norm(training):
    x = rng.standard_normal((6, 4))
    b = rng.standard_normal(4)
    rm = rng.standard_normal(4)
    y, mean = normlab.native_mean_only_batch_norm(x, b, rm, training)
    m = x.mean(axis=0) if training else rm
    np.testing.assert_allclose(y, x - m + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, m, rtol=1e-12)
    g = rng.standard_normal(x.shape)
    dx, db = normlab.native_mean_only_batch_norm_backward(g, training, True)
    np.testing.assert_allclose(dx, g - g.mean(axis=0) if training else g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=1e-12)


def test_empty_batches():
    x = np.zeros((0, 6, 3), np.float32)
    assert normlab.group_norm(x, 2).shape == (0, 6, 3)
    assert normlab.rms_norm(x, 3).shape == (0, 6, 3)
    dx, dw = normlab.native_rms_norm_backward(x, x, 3, np.zeros((0, 6, 1), np.float32),
                                              np.ones(3, np.float32))
    assert dx.shape == (0, 6, 3) and (dw == 0).all()


def test_nan_propagates():
    x = rng.standard_normal((2, 4, 3))
    x[0, 0, 0] = np.nan
    y = normlab.group_norm(x, 2)
    assert np.isnan(y[0, :2]).all() and np.isfinite(y[0, 2:]).all() and np.isfinite(y[1]).all()
    r = normlab.rms_norm(x, 3)
    assert np.isnan(r[0, 0]).all() and np.isfinite(r[0, 1:]).all()


def test_group_norm_large_mean_small_spread():
    x = 1e4 + 1e-2 * rng.standard_normal((2, 4, 64))
    for dtype, tol in [(np.float32, 2e-2), (np.float64, 1e-8)]:
        y = normlab.group_norm(x.astype(dtype), 2)
        np.testing.assert_allclose(y, gn_ref(x.astype(dtype).astype(np.float64), 2, None, None,
                                             1e-5)[0], rtol=tol, atol=tol)


f32 = np.zeros((2, 6), np.float32)
f64 = np.zeros((2, 6))


@pytest.mark.parametrize("call,exc,words", [
    (lambda: normlab.rms_norm(f32, 5), ValueError, ["rms_norm", "(2, 6)", "(5,)"]),
    (lambda: normlab.rms_norm(f32, 6, f64[0]), TypeError, ["rms_norm", "weight", "float64"]),
    (lambda: normlab.rms_norm(f32.astype(np.int32), 6), TypeError, ["rms_norm", "int32"]),
    (lambda: normlab.group_norm(f32, 4), ValueError, ["group_norm", "num_groups 4", "6"]),
    (lambda: normlab.group_norm(f32, 3, np.ones(5, np.float32)), ValueError,
     ["group_norm", "weight", "(5,)", "(6,)"]),
    (lambda: normlab.group_norm(np.zeros((4, 6, 3), np.float32)[:, :, ::2], 3), ValueError,
     ["group_norm", "C-contiguous"]),
    (lambda: normlab.group_norm(f32, 3, eps=0), ValueError, ["group_norm", "eps"]),
    (lambda: normlab.weight_norm(np.zeros((3, 4, 5)), np.ones((1, 4, 1)), 1), ValueError,
     ["weight_norm", "dim 1", "(3, 4, 5)"]),
    (lambda: normlab.weight_norm(f64, np.ones(3), 0), ValueError, ["weight_norm", "g", "(3,)", "2"]),
    (lambda: normlab.native_batch_renorm(np.zeros((1, 3)), None, None, np.zeros(3), np.ones(3),
                                         3, 5, 1e-5), ValueError,
     ["batch_renorm", "more than 1 value", "(1, 3)"]),
    (lambda: normlab.native_mean_only_batch_norm(f64, None, None, False), ValueError,
     ["mean_only_batch_norm", "running_mean"]),
])
def test_errors_name_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value)


torch = None
try:
    import torch  # noqa: F811
except ImportError:
    pass
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@needs_torch
def test_group_norm_and_weight_norm_match_torch_and_take_tensors():
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = normlab.group_norm(x, 3, w, b, 1e-5)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, torch.nn.functional.group_norm(x, 3, w, b, 1e-5))
    v, g = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    torch.testing.assert_close(normlab.weight_norm(v, g, 0), torch._weight_norm(v, g, 0))
    g1 = torch.randn(1, 7, dtype=torch.float64)
    torch.testing.assert_close(normlab.weight_norm(v, g1, 1), torch._weight_norm(v, g1, 1))


@pytest.mark.skipif(torch is None or not hasattr(torch.nn.functional, "rms_norm"),
                    reason="torch.nn.functional.rms_norm needs torch >= 2.4")
def test_rms_norm_matches_torch():
    x = torch.randn(3, 4, 8)
    w = torch.randn(8)
    for eps in (None, 1e-3):
        torch.testing.assert_close(normlab.rms_norm(x, (8,), w, eps),
                                   torch.nn.functional.rms_norm(x, (8,), w, eps))
