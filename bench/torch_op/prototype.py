"""fwd+bwd at 4x32 and 128x512 of: the bare kernels (normlab's raw extension
calls on buffers allocated once), an identity autograd.Function, the C++ custom
op of bench/torch_op/prototype.cpp (its first comment: how to build it),
normlab.torch.LayerNorm, torch.nn.LayerNorm and F.layer_norm; min of 7 x 1000.

    cd python/tests && python ../../bench/torch_op/prototype.py /tmp/libnormlab_proto.so
"""
import sys
import timeit

import torch

import normlab
import normlab.torch as nt

torch.ops.load_library(sys.argv[1])
op = torch.ops.normlab_proto.layer_norm
raw = normlab._normlab


class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


CASES = [("identity Function", "Ident.apply(x).backward(g)"),
         ("C++ op (prototype)", "op(x, w, b, C, 1e-5).backward(g)"),
         ("normlab.torch", "m(x).backward(g)"),
         ("torch.nn", "tm(x).backward(g)"),
         ("F.layer_norm", "torch.nn.functional.layer_norm(x, (C,), w, b).backward(g)")]

for N, C in [(4, 32), (128, 512)]:
    x, g = torch.randn(N, C).requires_grad_(), torch.randn(N, C)
    m, tm = nt.LayerNorm(C), torch.nn.LayerNorm(C)
    w, b = m.weight, m.bias
    op(x, w, b, C, 1e-5).backward(g)  # the prototype computes what torch.nn does
    xr = x.detach().clone().requires_grad_()
    tm(xr).backward(g)
    torch.testing.assert_close(op(x, w, b, C, 1e-5), tm(xr))
    torch.testing.assert_close(x.grad, xr.grad)
    xd = x.detach()
    out, st, dx = torch.empty_like(xd), xd.new_empty(2 * N), torch.empty_like(xd)
    dw, db = torch.zeros_like(w), torch.zeros_like(b)
    P = (lambda t: t.data_ptr())

    def bare():
        s, r = P(st), P(st) + 4 * N
        raw.raw_layer_norm(False, P(out), s, r, P(xd), P(w), P(b), N, C, 1e-5)
        raw.raw_layer_norm_backward(False, P(dx), P(dw), P(db), P(g), P(xd), s, r, P(w), N, C)

    env = dict(globals(), **locals())

    def t(stmt):
        return min(timeit.repeat(stmt, globals=env, number=1000, repeat=7)) / 1000 * 1e6

    row = [f"bare {t('bare()'):.1f}"] + [f"{k} {t(s):.1f}" for k, s in CASES]
    print(f"{N}x{C}: " + " | ".join(row) + " us", flush=True)
