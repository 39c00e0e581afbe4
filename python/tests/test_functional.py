"""normlab's functional kernels on NumPy arrays against plain NumPy definitions
(float64 to 1e-12, float32 to float tolerance), backward against central
differences, and the errors. Needs only numpy and pytest."""

import numpy as np
import pytest

import normlab

rng = np.random.default_rng(0)


def ln_ref(x, k, w, b, eps):
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, mean, 1 / np.sqrt(var + eps)


def bn_ref(x, w, b, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y, mean, var


def numeric_grad(f, arrays, i, h=1e-6):
    """d sum(f() * g) / d arrays[i] by central differences (f reads arrays in place)."""
    a = arrays[i]
    grad = np.zeros_like(a)
    for j in np.ndindex(a.shape):
        old = a[j]
        a[j] = old + h
        up = f()
        a[j] = old - h
        down = f()
        a[j] = old
        grad[j] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_forward(dtype, tol, affine):
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 3).astype(dtype)
    ns = (5, 6)
    w = rng.standard_normal(ns).astype(dtype) if affine != "none" else None
    b = rng.standard_normal(ns).astype(dtype) if affine == "both" else None
    y, mean, rstd = normlab.native_layer_norm(x, ns, w, b, 1e-5)
    ry, rmean, rrstd = ln_ref(x.astype(np.float64), 2, w, b, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.shape == (3, 4, 1, 1) and rstd.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(y, ry, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, rmean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rstd, rrstd, rtol=tol, atol=tol)
    np.testing.assert_array_equal(normlab.layer_norm(x, ns, w, b), y)


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_backward_gradcheck(affine):
    x = rng.standard_normal((4, 7))
    w = rng.standard_normal(7) if affine != "none" else None
    b = rng.standard_normal(7) if affine == "both" else None
    g = rng.standard_normal((4, 7))
    _, mean, rstd = normlab.native_layer_norm(x, 7, w, b, 1e-5)
    dx, dw, db = normlab.native_layer_norm_backward(g, x, [7], mean, rstd, w, b, (True,) * 3)
    arrays = [x, w, b]
    f = lambda: float((normlab.layer_norm(x, 7, w, b) * g).sum())  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, arrays, 0), atol=1e-7)
    if w is None:
        assert dw is None
    else:
        np.testing.assert_allclose(dw, numeric_grad(f, arrays, 1), atol=1e-7)
    if b is None:
        assert db is None
    else:
        np.testing.assert_allclose(db, numeric_grad(f, arrays, 2), atol=1e-7)
    # output_mask switches results off
    dx2, dw2, db2 = normlab.native_layer_norm_backward(g, x, 7, mean, rstd, w, b,
                                                       (False, True, False))
    assert dx2 is None and db2 is None
    if w is not None:
        np.testing.assert_allclose(dw2, dw, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(16, 5), (6, 3, 7), (4, 2, 3, 3)])
def test_batch_norm_training_and_running_stats(dtype, tol, shape):
    x = (rng.standard_normal(shape) + 1).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = np.full(C, 0.5, dtype), np.full(C, 2.0, dtype)
    y, save_mean, save_invstd = normlab.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    ry, mean, var = bn_ref(x.astype(np.float64), w, b, 1e-5)
    np.testing.assert_allclose(y, ry, rtol=tol, atol=tol)
    np.testing.assert_allclose(save_mean, mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + 1e-5), rtol=tol, atol=tol)
    n = x.size // C
    # updated in place, with the unbiased variance (PyTorch)
    np.testing.assert_allclose(rm, 0.9 * 0.5 + 0.1 * mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, 0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=tol, atol=tol)
    # eval: the running statistics, nothing saved, nothing updated
    before = rm.copy()
    ye, sm, si = normlab.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    shape_c = (1, -1) + (1,) * (x.ndim - 2)
    ref = (x - rm.reshape(shape_c)) / np.sqrt(rv.reshape(shape_c) + 1e-5) * w.reshape(
        shape_c) + b.reshape(shape_c)
    np.testing.assert_allclose(ye, ref, rtol=tol, atol=tol)
    assert sm.shape == (0,) and si.shape == (0,)
    np.testing.assert_array_equal(rm, before)
    np.testing.assert_array_equal(normlab.batch_norm(x, rm, rv, w, b), ye)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_gradcheck(train, affine):
    x = rng.standard_normal((5, 3, 2))
    w = rng.standard_normal(3) if affine else None
    b = rng.standard_normal(3) if affine else None
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    g = rng.standard_normal(x.shape)
    _, sm, si = normlab.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    dx, dw, db = normlab.native_batch_norm_backward(g, x, w, rm, rv, sm if train else None,
                                                    si if train else None, train, 1e-5)
    arrays = [x, w, b]

    def f():
        if train:
            y = normlab.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)[0]
        else:
            y = normlab.batch_norm(x, rm, rv, w, b, training=False)
        return float((y * g).sum())

    np.testing.assert_allclose(dx, numeric_grad(f, arrays, 0), atol=1e-7)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(f, arrays, 1), atol=1e-7)
        np.testing.assert_allclose(db, numeric_grad(f, arrays, 2), atol=1e-7)
    else:
        assert dw is not None  # PyTorch: grad_weight of the unit scale (unused)


def test_inputs_are_not_copied():
    # A read-only, unaligned (offset) view is read in place; running stats are written in place.
    base = rng.standard_normal(4 * 9 + 1).astype(np.float32)
    x = base[1:].reshape(4, 9)
    x.flags.writeable = False
    y = normlab.layer_norm(x, 9)
    np.testing.assert_allclose(y, ln_ref(x.astype(np.float64), 1, None, None, 1e-5)[0],
                               atol=2e-5)
    stats = np.zeros(6, np.float32)
    rm, rv = stats[:3], stats[3:]
    rv[:] = 1
    normlab.batch_norm(rng.standard_normal((4, 3)).astype(np.float32), rm, rv, training=True)
    assert np.all(stats[:3] != 0) and np.all(stats[3:] != 1)


def test_empty_batch():
    y, mean, rstd = normlab.native_layer_norm(np.zeros((0, 4)), 4, np.ones(4), None, 1e-5)
    assert y.shape == (0, 4) and mean.shape == (0, 1)
    dx, dw, _ = normlab.native_layer_norm_backward(np.zeros((0, 4)), np.zeros((0, 4)), 4, mean,
                                                   rstd, np.ones(4), None)
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, np.zeros(4))
    rm, rv = np.zeros(3), np.ones(3)
    y = normlab.batch_norm(np.zeros((0, 3)), rm, rv, training=True)
    assert y.shape == (0, 3)
    np.testing.assert_array_equal(rm, np.zeros(3))


def test_nan_propagates():
    x = rng.standard_normal((3, 4))
    x[1, 2] = np.nan
    y = normlab.layer_norm(x, 4)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("call,exc,words", [
    (lambda: normlab.layer_norm(np.zeros((2, 4), np.int32), 4), TypeError, "dtype int32"),
    (lambda: normlab.layer_norm(np.zeros((2, 4), np.float32), 4, np.ones(4)), TypeError,
     "weight has dtype float64, expected float32"),
    (lambda: normlab.layer_norm(np.zeros((4, 4))[:, ::2], 2), ValueError, "not C-contiguous"),
    (lambda: normlab.layer_norm(np.zeros((2, 4)), 3), ValueError,
     "(2, 4) does not end in normalized_shape (3,)"),
    (lambda: normlab.layer_norm(np.zeros((2, 4)), 4, np.ones(3)), ValueError,
     "weight has shape (3,), expected (4,)"),
    (lambda: normlab.layer_norm(np.zeros((2, 4)), 4, eps=-1), ValueError, "eps must be >= 0"),
    (lambda: normlab.layer_norm([[1.0, 2.0]], 2), TypeError, "got list"),
    (lambda: normlab.batch_norm(np.zeros((1, 3)), np.zeros(3), np.ones(3), training=True),
     ValueError, "more than 1 value per channel"),
    (lambda: normlab.batch_norm(np.zeros((4, 3)), np.zeros(2), np.ones(2)), ValueError,
     "running_mean has shape (2,), expected (3,)"),
    (lambda: normlab.batch_norm(np.zeros((4,)), None, None, training=True), ValueError,
     "(N, C) or (N, C, *)"),
    (lambda: normlab.batch_norm(np.zeros((4, 3)), None, None, training=True, eps=0),
     ValueError, "eps must be positive"),
    (lambda: normlab.native_layer_norm_backward(np.zeros((2, 5)), np.zeros((2, 4)), 4,
                                                np.zeros(2), np.ones(2), None, None),
     ValueError, "grad_out has shape (2, 5)"),
])
def test_errors_name_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_inputs_near_float_overflow():
    # The fast float kernels' statistics would overflow here; the forward redoes
    # such rows exactly (as the C++ layers), and the results match float64's.
    row = np.array([3e38, -3e38, 1e38, 0, 2e38, -1e38, 5e37, -2e38], np.float32)
    x = np.repeat(row[None], 4, 0)
    g = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, rstd = normlab.native_layer_norm(x, 8, None, None, 1e-5)
    dx = normlab.native_layer_norm_backward(g, x, 8, mean, rstd, None, None)[0]
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    y64, m64, r64 = normlab.native_layer_norm(x64, 8, None, None, 1e-5)
    dx64 = normlab.native_layer_norm_backward(g64, x64, 8, m64, r64, None, None)[0]
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dx64, rtol=1e-4, atol=1e-44)
    xb = np.ascontiguousarray(x.T)  # (8, 4): channels of huge spread
    out, sm, si = normlab.native_batch_norm(xb, None, None, None, None, True, 0.1, 1e-5)
    out64 = normlab.native_batch_norm(xb.astype(np.float64), None, None, None, None, True, 0.1,
                                      1e-5)[0]
    np.testing.assert_allclose(out, out64, rtol=1e-5, atol=1e-6)


def test_kernel_isa_is_a_level_named_in_build_summary():
    level = normlab.kernel_isa()
    assert level in ("default", "avx2", "avx512")
    assert f"level {level} of" in normlab.build_summary()
