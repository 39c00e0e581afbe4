"""normlab.torch.BatchNorm2d and InstanceNorm2d against torch.nn's (training and
eval outputs, dx, parameter grads, running statistics after several steps,
momentum=None, state_dicts both ways, gradcheck in double), and the errors of
the one-call-per-pass path (python/src/raw_ext.cpp) for every module using it."""

import pytest

torch = pytest.importorskip("torch")
import normlab.torch as nt  # noqa: E402

BN2D_OPTIONS = [dict(), dict(affine=False), dict(track_running_stats=False), dict(momentum=None),
                dict(momentum=0.3, eps=1e-3)]
IN2D_OPTIONS = [dict(), dict(affine=True), dict(affine=True, track_running_stats=True),
                dict(track_running_stats=True, momentum=0.3, eps=1e-3)]


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


def step_both(ours, theirs, x, g):
    outs = []
    for m in (ours, theirs):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def check_state(ours, theirs):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (ka, a), (kb, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{ka}")


@pytest.mark.parametrize("options", BN2D_OPTIONS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 3, 1, 1), (1, 3, 4, 4)])
def test_batch_norm2d_matches_torch(options, shape):
    torch.manual_seed(2)
    ours, theirs = nt.BatchNorm2d(3, **options), torch.nn.BatchNorm2d(3, **options)
    assert isinstance(ours, torch.nn.BatchNorm2d) and repr(ours) == repr(theirs)
    randomize(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # theirs -> ours
    for _ in range(3):  # training steps move the running statistics
        step_both(ours, theirs, torch.randn(shape) * 2 + 1, torch.randn(shape))
    check_state(ours, theirs)
    ours.eval()
    theirs.eval()
    step_both(ours, theirs, torch.randn(shape) * 2 + 1, torch.randn(shape))
    fresh = torch.nn.BatchNorm2d(3, **options)
    fresh.load_state_dict(ours.state_dict(), strict=True)  # ours -> theirs
    check_state(ours, fresh)


@pytest.mark.parametrize("options", IN2D_OPTIONS)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (4, 5, 6)])
def test_instance_norm2d_matches_torch(options, shape):
    torch.manual_seed(3)
    ours, theirs = nt.InstanceNorm2d(4, **options), torch.nn.InstanceNorm2d(4, **options)
    randomize(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for _ in range(3):
        step_both(ours, theirs, torch.randn(shape) * 2 + 1, torch.randn(shape))
    check_state(ours, theirs)
    ours.eval()
    theirs.eval()
    step_both(ours, theirs, torch.randn(shape) * 2 + 1, torch.randn(shape))


def test_batch_norm2d_channels_last_and_expanded_grad():
    torch.manual_seed(4)
    ours, theirs = nt.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    outs = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * y).sum().backward()  # a contiguous grad
        y2 = m(xi)
        y2.sum().backward()  # an expanded (stride 0) grad
        outs.append([y, y2, xi.grad, m.weight.grad, m.bias.grad])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    check_state(ours, theirs)


def gradcheck_module(m, shape, train):
    m = m.double()
    randomize(m)
    m.train(train)
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    saved = {k: b.clone() for k, b in m.named_buffers()}

    def f(x, *params):
        with torch.no_grad():
            for k, b in m.named_buffers():
                b.copy_(saved[k])
        return m(x)

    assert torch.autograd.gradcheck(f, (x, *m.parameters()))


@pytest.mark.parametrize("make,shape,train", [
    (lambda: nt.BatchNorm2d(3), (2, 3, 2, 3), True),
    (lambda: nt.BatchNorm2d(3, affine=False), (2, 3, 2, 3), True),
    (lambda: nt.BatchNorm2d(3, momentum=None), (2, 3, 2, 3), False),
    (lambda: nt.BatchNorm2d(3, track_running_stats=False), (3, 3, 2, 1), False),
    (lambda: nt.InstanceNorm2d(3, affine=True), (2, 3, 2, 3), True),
    (lambda: nt.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 2, 3), False),
    (lambda: nt.InstanceNorm2d(3), (3, 2, 3), True),
])
def test_gradcheck_2d_in_double(make, shape, train):
    gradcheck_module(make(), shape, train)


def test_empty_batches_2d():
    for m in (nt.BatchNorm2d(3), nt.InstanceNorm2d(3, affine=True)):
        x = torch.zeros(0, 3, 4, 4, requires_grad=True)
        y = m(x)
        assert y.shape == (0, 3, 4, 4)
        y.sum().backward()
        assert x.grad.shape == (0, 3, 4, 4)


def test_errors_name_the_argument_and_numbers():
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="layer_norm: input has dtype bfloat16; normlab computes"):
        nt.LayerNorm(4)(x.to(torch.bfloat16))
    with pytest.raises(TypeError, match="group_norm: input has dtype int64"):
        nt.group_norm(torch.zeros(2, 4, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="batch_norm: input is on meta; normlab's kernels run"):
        nt.BatchNorm2d(3)(torch.empty(2, 3, 4, 4, device="meta"))
    with pytest.raises(TypeError, match="rms_norm: input has layout torch.sparse_coo"):
        nt.rms_norm(torch.eye(4).to_sparse(), 4)
    with pytest.raises(TypeError, match=r"batch_norm: weight has dtype float32, expected float64"):
        nt.BatchNorm2d(3)(torch.randn(2, 3, 4, 4, dtype=torch.double))
    with pytest.raises(ValueError, match=r"layer_norm: input of shape \(2, 5\) does not end in "
                       r"normalized_shape \(4,\)"):
        nt.LayerNorm(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"rms_norm: weight has shape \(5,\), expected \(4,\)"):
        nt.rms_norm(x, 4, torch.ones(5))
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(3,\), expected \(4,\)"):
        nt.batch_norm(torch.randn(2, 4, 5, 5), None, None, torch.ones(3), None, True)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): input of shape \(2, 4, 5, 5\) has 4 "
                       r"channels, expected 3"):
        nt.BatchNorm2d(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\): input of shape \(8, 3\) has 3 "
                       r"channels, expected 4"):
        nt.BatchNorm1d(4)(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        nt.BatchNorm2d(3)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nt.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"InstanceNorm2d: expected 3 channels, got input of "
                       r"shape \(2, 4, 5, 5\)"):
        nt.InstanceNorm2d(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"group_norm: num_groups 3 must be positive and divide "
                       r"the number of channels 4"):
        nt.group_norm(torch.randn(2, 4), 3)
    m = nt.BatchNorm2d(3)
    m.running_var = torch.ones(6)[::2]  # updated in place: must be contiguous
    with pytest.raises(ValueError, match=r"running_var of shape \(3,\) is not contiguous \("
                       r"strides \(2,\)\)"):
        m(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="eps must be positive"):
        nt.batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0)
    # a non-contiguous weight is copied, not rejected
    w = torch.ones(8)[::2]
    torch.testing.assert_close(nt.layer_norm(x, 4, w), torch.nn.functional.layer_norm(x, (4,), w))
