"""normlab.torch against torch.nn: outputs, gradients and running statistics
for every option, state_dict keys both ways, torch.autograd.gradcheck in double."""

import pytest

torch = pytest.importorskip("torch")
import normlab.torch as nt  # noqa: E402

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split(".")[:2])
# nn.LayerNorm's bias argument came in torch 2.1 (Debian's CI torch is 1.13)
LN_OPTIONS = [dict(), dict(elementwise_affine=False),
              pytest.param(dict(bias=False), marks=pytest.mark.skipif(
                  TORCH_VERSION < (2, 1), reason=f"nn.LayerNorm(bias=False) needs torch >= 2.1, "
                  f"this is {torch.__version__}")),
              dict(eps=1e-3)]
BN_OPTIONS = [dict(), dict(affine=False), dict(track_running_stats=False), dict(momentum=None),
              dict(momentum=0.3, eps=1e-3)]


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("options", LN_OPTIONS)
@pytest.mark.parametrize("shape,ns", [((8, 16), 16), ((2, 3, 4, 5), (4, 5))])
def test_layer_norm_matches_torch(options, shape, ns):
    torch.manual_seed(0)
    ours, theirs = nt.LayerNorm(ns, **options), torch.nn.LayerNorm(ns, **options)
    randomize(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(shape) * 3 + 2
    g = torch.randn(shape)
    outs = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", BN_OPTIONS)
@pytest.mark.parametrize("shape", [(16, 6), (5, 6, 7)])
def test_batch_norm1d_matches_torch(options, shape):
    torch.manual_seed(1)
    ours, theirs = nt.BatchNorm1d(6, **options), torch.nn.BatchNorm1d(6, **options)
    randomize(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(3):  # training steps move the running statistics
        x = torch.randn(shape) * 2 + 1
        g = torch.randn(shape)
        outs = []
        for m in (ours, theirs):
            m.zero_grad()
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(g)
            outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    ours.eval(), theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", LN_OPTIONS)
def test_layer_norm_gradcheck(options):
    m = nt.LayerNorm((3, 4), **options).double()
    randomize(m)
    x = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, *p: nt.layer_norm(x, (3, 4), m.weight, m.bias, m.eps), (x, *m.parameters()))


@pytest.mark.parametrize("options", BN_OPTIONS)
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm1d_gradcheck(options, train):
    m = nt.BatchNorm1d(3, **options).double()
    randomize(m)
    m.train(train)
    if not train and m.running_var is not None:
        with torch.no_grad():
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 5, dtype=torch.double, requires_grad=True)
    params = [p for p in m.parameters()]
    assert torch.autograd.gradcheck(lambda x, *p: m(x), (x, *params))


def test_functional_on_torch_tensors_returns_tensors_and_updates_buffers():
    import normlab

    x = torch.randn(8, 4)
    rm, rv = torch.zeros(4), torch.ones(4)
    y = normlab.batch_norm(x, rm, rv, training=True)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(rm, 0.1 * x.mean(0))
    out, mean, rstd = normlab.native_layer_norm(x, [4], None, None, 1e-5)
    ref = torch.native_layer_norm(x, [4], None, None, 1e-5)
    for a, b in zip((out, mean, rstd), ref):
        torch.testing.assert_close(a, b)


def test_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nt.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(TypeError, match="weight has dtype float32, expected float64"):
        nt.LayerNorm(4)(torch.randn(2, 4, dtype=torch.double))
    # a non-contiguous input is made contiguous first
    x = torch.randn(4, 8)[:, ::2]
    torch.testing.assert_close(nt.LayerNorm(4)(x), torch.nn.LayerNorm(4)(x))
