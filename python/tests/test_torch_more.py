"""normlab.torch's RMSNorm, GroupNorm, InstanceNorm1d (against torch.nn's) and
BatchRenorm1d, GhostBatchNorm1d, MeanOnlyBatchNorm1d (against the PyTorch twins
in python/normlab_torch.py, which generate normlab's C++ fixtures): outputs,
input and parameter gradients, running statistics after several training
steps, eval outputs, state_dict keys both ways, torch.autograd.gradcheck in
double, and the weight_norm / group_norm / rms_norm functions."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
import normlab.torch as nt  # noqa: E402

# The twins (python/normlab_torch.py); appended so that the installed normlab
# package, not python/normlab, is the one imported.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import normlab_torch as twins  # noqa: E402

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split(".")[:2])
HAS_RMSNORM = hasattr(torch.nn, "RMSNorm")
needs_rmsnorm = pytest.mark.skipif(not HAS_RMSNORM,
                                   reason=f"torch.nn.RMSNorm needs torch >= 2.4, "
                                   f"this is {torch.__version__}")


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


def compare(ours, theirs, shape, steps=3, tol=(1e-4, 1e-5), eval_too=True, dtype=torch.float32):
    """Training steps then eval; outputs, grads and state must agree."""
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for _ in range(steps):
        x = torch.randn(shape, dtype=dtype) * 2 + 1
        g = torch.randn(shape, dtype=dtype)
        outs = []
        for m in (ours, theirs):
            m.zero_grad()
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(g)
            outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1])
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    if eval_too:
        ours.eval(), theirs.eval()
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(ours(x), theirs(x), rtol=tol[0], atol=tol[1])
    # and back: ours' state loads strictly into theirs
    theirs.load_state_dict(ours.state_dict(), strict=True)


@needs_rmsnorm
@pytest.mark.parametrize("options", [dict(), dict(elementwise_affine=False), dict(eps=1e-3)])
@pytest.mark.parametrize("shape,ns", [((8, 16), 16), ((2, 3, 4, 5), (4, 5))])
def test_rms_norm_matches_torch(options, shape, ns):
    torch.manual_seed(0)
    theirs = torch.nn.RMSNorm(ns, **options)
    randomize(theirs)
    compare(nt.RMSNorm(ns, **options), theirs, shape, steps=1)


def test_rms_norm_module_without_torch_rmsnorm_has_its_state():
    m = nt.RMSNorm((4, 5), eps=1e-3)
    assert list(m.state_dict()) == ["weight"] and m.weight.shape == (4, 5)
    twin = twins.RMSNormTwin((4, 5), eps=1e-3)
    randomize(twin)
    compare(m, twin, (3, 4, 5), steps=1)


@pytest.mark.parametrize("options", [dict(), dict(affine=False), dict(eps=1e-3)])
@pytest.mark.parametrize("G,C,shape", [(2, 6, (4, 6)), (3, 6, (4, 6, 5)), (1, 4, (2, 4, 3, 3)),
                                       (4, 4, (3, 4, 7))])
def test_group_norm_matches_torch(options, G, C, shape):
    torch.manual_seed(1)
    theirs = torch.nn.GroupNorm(G, C, **options)
    randomize(theirs)
    compare(nt.GroupNorm(G, C, **options), theirs, shape, steps=1)


IN_OPTIONS = [dict(), dict(affine=True), dict(track_running_stats=True),
              dict(affine=True, track_running_stats=True, momentum=0.3),
              pytest.param(dict(track_running_stats=True, momentum=None), marks=pytest.mark.skipif(
                  TORCH_VERSION < (2, 0), reason="nn.InstanceNorm1d(momentum=None) fails in "
                  f"torch < 2.0, this is {torch.__version__}"))]


@pytest.mark.parametrize("options", IN_OPTIONS)
@pytest.mark.parametrize("shape", [(4, 5, 6), (5, 6)])
def test_instance_norm1d_matches_torch(options, shape):
    torch.manual_seed(2)
    theirs = torch.nn.InstanceNorm1d(5, **options)
    randomize(theirs)
    compare(nt.InstanceNorm1d(5, **options), theirs, shape)


BR_OPTIONS = [dict(), dict(affine=False), dict(momentum=None), dict(rmax=1.5, dmax=0.5),
              dict(warmup=1, rmax_ramp=2, dmax_ramp=3), dict(rmax=1.0, dmax=0.0, eps=1e-3)]


@pytest.mark.parametrize("options", BR_OPTIONS)
@pytest.mark.parametrize("shape", [(16, 6), (5, 6, 7)])
def test_batch_renorm1d_matches_twin(options, shape):
    torch.manual_seed(3)
    theirs = twins.BatchRenorm1d(6, **options)
    randomize(theirs)
    with torch.no_grad():  # running stats away from (0, 1) so that r and d clip
        theirs.running_mean.uniform_(-1, 1)
        theirs.running_var.uniform_(0.2, 3)
    compare(nt.BatchRenorm1d(6, **options), theirs, shape, steps=4)


GB_OPTIONS = [dict(virtual_batch_size=4), dict(virtual_batch_size=5, affine=False),
              dict(virtual_batch_size=4, track_running_stats=False),
              dict(virtual_batch_size=3, momentum=None, eps=1e-3)]


@pytest.mark.parametrize("options", GB_OPTIONS)
@pytest.mark.parametrize("shape", [(18, 6), (11, 6, 3)])
def test_ghost_batch_norm1d_matches_twin(options, shape):
    torch.manual_seed(4)
    theirs = twins.GhostBatchNorm1d(6, **options)
    randomize(theirs)
    # in double: a virtual batch of 2 values per channel makes float32's
    # rounding differences in dx large (x_hat = +-1, the terms cancel)
    compare(nt.GhostBatchNorm1d(6, **options), theirs, shape, dtype=torch.float64)


MO_OPTIONS = [dict(), dict(affine=False), dict(track_running_stats=False), dict(momentum=None)]


@pytest.mark.parametrize("options", MO_OPTIONS)
@pytest.mark.parametrize("shape", [(16, 6), (5, 6, 7)])
def test_mean_only_batch_norm1d_matches_twin(options, shape):
    torch.manual_seed(5)
    theirs = twins.MeanOnlyBatchNorm1d(6, **options)
    randomize(theirs)
    compare(nt.MeanOnlyBatchNorm1d(6, **options), theirs, shape)


def clipped(m):
    """Running statistics that clip Batch Renorm's r to rmax and d to dmax."""
    with torch.no_grad():
        m.running_mean.fill_(100.0)
        m.running_var.fill_(1e-4)
    return m


def gradcheck_module(m, shape, train=True):
    m = m.double()
    randomize(m)
    m.train(train)
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    # Training moves the buffers (running statistics, Batch Renorm's r, d and
    # schedule step): every call starts from the same ones.
    saved = {k: b.clone() for k, b in m.named_buffers()}

    def f(x, *params):
        with torch.no_grad():
            for k, b in m.named_buffers():
                b.copy_(saved[k])
        return m(x)

    assert torch.autograd.gradcheck(f, (x, *m.parameters()))


@pytest.mark.parametrize("make,shape,train", [
    (lambda: nt.RMSNorm((3, 4)), (2, 3, 4), True),
    (lambda: nt.RMSNorm(4, eps=1e-3, elementwise_affine=False), (5, 4), True),
    (lambda: nt.GroupNorm(2, 4), (3, 4, 5), True),
    (lambda: nt.GroupNorm(4, 4, affine=False), (3, 4, 5), True),
    (lambda: nt.InstanceNorm1d(3, affine=True), (2, 3, 5), True),
    (lambda: nt.InstanceNorm1d(3, affine=True, track_running_stats=True), (2, 3, 5), False),
    # r, d are constants in the backward (stop_gradient): gradcheck with both clipped
    (lambda: clipped(nt.BatchRenorm1d(3)), (6, 3, 2), True),
    (lambda: nt.BatchRenorm1d(3, affine=False, rmax=1.0, dmax=0.0), (6, 3), True),
    (lambda: nt.BatchRenorm1d(3), (6, 3), False),
    (lambda: nt.GhostBatchNorm1d(3, virtual_batch_size=3), (8, 3), True),
    (lambda: nt.GhostBatchNorm1d(3, virtual_batch_size=2, affine=False), (6, 3, 2), True),
    (lambda: nt.GhostBatchNorm1d(3, virtual_batch_size=2), (6, 3), False),
    (lambda: nt.MeanOnlyBatchNorm1d(3), (6, 3), True),
    (lambda: nt.MeanOnlyBatchNorm1d(3), (6, 3, 2), False),
])
def test_gradcheck_in_double(make, shape, train):
    gradcheck_module(make(), shape, train)


def test_weight_norm_function_gradcheck_and_torch():
    for shape, dim, gshape in [((5, 4), 0, (5, 1)), ((5, 4), 1, (1, 4)), ((5, 4), None, ())]:
        v = torch.randn(shape, dtype=torch.double, requires_grad=True)
        g = torch.randn(gshape, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, g: nt.weight_norm(v, g, dim), (v, g))
        torch.testing.assert_close(nt.weight_norm(v, g, dim),
                                   torch._weight_norm(v, g, -1 if dim is None else dim))


def test_errors_and_empty_batches():
    with pytest.raises(ValueError, match="num_groups 4 must be positive and divide"):
        nt.group_norm(torch.randn(2, 6), 4)
    with pytest.raises(ValueError, match=r"BatchRenorm1d: expected more than 1 value"):
        nt.BatchRenorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"GhostBatchNorm1d: expected input \(N, 3\)"):
        nt.GhostBatchNorm1d(3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="virtual_batch_size=4"):
        nt.GhostBatchNorm1d(3, virtual_batch_size=4)(torch.randn(5, 3))
    for m in (nt.GroupNorm(2, 4), nt.RMSNorm(4), nt.MeanOnlyBatchNorm1d(4),
              nt.GhostBatchNorm1d(4), nt.BatchRenorm1d(4)):
        x = torch.zeros(0, 4, requires_grad=True)
        y = m(x)
        assert y.shape == (0, 4)
        y.sum().backward()


def test_swap_one_line_and_train():
    """The README's example: a LayerNorm swapped in a model, a few SGD steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), nt.LayerNorm(32), torch.nn.ReLU(),
                                nt.GroupNorm(4, 32), torch.nn.Linear(32, 2))
    x = torch.randn(256, 20)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_device_and_dtype_errors_name_the_argument():
    import normlab

    with pytest.raises(TypeError, match="input is on meta; normlab's kernels run on the CPU"):
        normlab.group_norm(torch.empty(2, 4, device="meta"), 2)
    with pytest.raises(TypeError, match="rms_norm: input has dtype bfloat16"):
        normlab.rms_norm(torch.zeros(2, 4, dtype=torch.bfloat16), 4)
