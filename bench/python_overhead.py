#!/usr/bin/env python3
"""Where the per-call time of a LayerNorm forward+backward goes in Python, at
small shapes (default 4x32 and 128x512), float32, one process: the minimum over
--samples samples of --calls calls each (the minimum is the least disturbed
figure on a shared machine).

  bare kernels          normlab's extension calls on buffers allocated once
  normlab bodies        _LayerNormFunction.forward + .backward called directly
                        (a stand-in ctx, no autograd): normlab.torch's own
                        Python (checks, allocations, data_ptr()s) + kernels
  normlab.torch         m(x).backward(g) with normlab.torch.LayerNorm
  identity Function     the cheapest torch.autograd.Function: clone forward,
                        pass-through backward, m(x).backward(g)
  aten kernels          torch.native_layer_norm + aten.native_layer_norm_backward
                        under no_grad (PyTorch's kernels without autograd)
  F.layer_norm          torch.nn.functional.layer_norm(x, ...).backward(g)
  torch.nn.LayerNorm    m(x).backward(g)

    python bench/python_overhead.py [--shapes 4x32,128x512] [--samples 15] [--calls 2000]

Needs torch and the normlab package (pip install .). Docs: docs/performance.md
("Python: normlab.torch against torch.nn").
"""
import argparse
import time

import torch
import torch.nn.functional as F

import normlab
import normlab.torch as nt

# The yardstick both benchmarks time: the cheapest autograd.Function.
from compare_python import _Identity


def best(fn, samples, calls):
    for _ in range(max(calls // 10, 10)):
        fn()
    out = float("inf")
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out = min(out, (time.perf_counter() - t) / calls)
    return out * 1e6


class _Ctx:
    """What _LayerNormFunction's forward and backward use of ctx."""
    needs_input_grad = (True, True, True, False, False)

    def save_for_backward(self, *t):
        self.saved_tensors = t


def cases(N, D):
    torch.manual_seed(0)
    x0, g = torch.randn(N, D) * 2 + 1, torch.randn(N, D)
    raw, P = normlab._normlab, (lambda t: t.data_ptr())
    m_nl, m_nn = nt.LayerNorm(D), torch.nn.LayerNorm(D)
    w, b = m_nl.weight.detach(), m_nl.bias.detach()
    y, dx, dw, db, st = (torch.empty_like(x0), torch.empty_like(x0), torch.zeros(D),
                         torch.zeros(D), x0.new_empty(2 * N))

    def bare():
        s = P(st)
        raw.raw_layer_norm(False, P(y), s, s + 4 * N, P(x0), P(w), P(b), N, D, 1e-5)
        raw.raw_layer_norm_backward(False, P(dx), P(dw), P(db), P(g), P(x0), s, s + 4 * N, P(w),
                                    N, D)

    fn, ctx = nt._LayerNormFunction, _Ctx()

    def bodies():
        fn.forward(ctx, x0, w, b, (D,), 1e-5)
        fn.backward(ctx, g)

    xa = x0.clone().requires_grad_()

    def module(m):
        def f():
            xa.grad = None
            m(xa).backward(g)
        return f

    def identity():
        xa.grad = None
        _Identity.apply(xa).backward(g)

    aten = torch.ops.aten

    def aten_kernels():
        with torch.no_grad():
            _, m, r = torch.native_layer_norm(x0, (D,), w, b, 1e-5)
            aten.native_layer_norm_backward(g, x0, (D,), m, r, w, b, [True, True, True])

    wt, bt = m_nn.weight, m_nn.bias

    def functional():
        xa.grad = None
        F.layer_norm(xa, (D,), wt, bt, 1e-5).backward(g)

    return [("bare kernels", bare), ("normlab bodies", bodies),
            ("normlab.torch", module(m_nl)), ("identity Function", identity),
            ("aten kernels", aten_kernels), ("F.layer_norm", functional),
            ("torch.nn.LayerNorm", module(m_nn))]


def shape_list(text):
    """'4x32,128x512' -> [(4, 32), (128, 512)]; argparse names the flag on an error."""
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected NxD[,NxD...] with N, D >= 1, got '{text}'")
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4x32,128x512", type=shape_list,
                    help="NxD shapes, comma-separated (default: %(default)s)")
    ap.add_argument("--samples", type=int, default=15,
                    help="samples per case; the minimum is reported (default: %(default)s)")
    ap.add_argument("--calls", type=int, default=2000,
                    help="fwd+bwd calls per sample (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the cases (interleaved)")
    args = ap.parse_args()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"{normlab.build_summary()}")
    for N, D in args.shapes:
        calls = max(10, args.calls * 4 * 32 // max(N * D, 4 * 32)) if N * D > 4096 else args.calls
        cs = cases(N, D)
        res = {name: float("inf") for name, _ in cs}
        for _ in range(args.rounds):
            for name, f in cs:
                res[name] = min(res[name], best(f, args.samples, calls))
        print(f"{N}x{D} (min of {args.rounds} x {args.samples} samples of {calls} calls, "
              "us per fwd+bwd)")
        for name, _ in cs:
            print(f"  {name:20} {res[name]:9.2f}")
        over = res["normlab.torch"] - res["bare kernels"]
        ours = res["normlab bodies"] - res["bare kernels"]
        rest = res["normlab.torch"] - res["normlab bodies"]
        theirs = res["torch.nn.LayerNorm"] - res["aten kernels"]
        print(f"  normlab.torch - bare kernels      {over:9.2f}\n"
              f"  of which our bodies' Python       {ours:9.2f}\n"
              f"  and autograd/module (the rest)    {rest:9.2f}\n"
              f"  torch.nn.LayerNorm - aten kernels {theirs:9.2f}")


if __name__ == "__main__":
    main()
