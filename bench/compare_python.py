#!/usr/bin/env python3
"""normlab.torch's modules against torch.nn's in one process, on the same tensors:
forward+backward (y = m(x); y.backward(g)) of LayerNorm, BatchNorm1d (training),
RMSNorm and GroupNorm(32, C) at NxC shapes (4096x1024, 128x512: the seed
network's, 4x32), BatchNorm2d (training) and InstanceNorm2d(affine=True) at
NxCxHxW shapes (128x64x28x28), float32, median of --repeats samples of
--min-time seconds each.

The per-call overhead of normlab.torch is its fwd+bwd time minus the bare
kernels' time, measured in the same process: the extension's raw forward and
backward calls (the ones normlab.torch makes, python/src/raw_ext.cpp) on buffers
allocated once. The "(identity Function)" row is the yardstick of what any
torch.autograd.Function costs: clone forward, pass-through backward. For
LayerNorm and the BatchNorms, "aten kernels" is PyTorch's own kernels called
without autograd (torch.native_layer_norm / native_batch_norm and their
backward) and "torch.nn overhead" torch.nn's fwd+bwd minus that: the same
per-call overhead measured for PyTorch's own modules.
`normlab bench`'s fwd+bwd (its own build, possibly other SIMD flags) is shown
beside the NxC rows when --normlab is given.

    python bench/compare_python.py [--repeats 7] [--min-time 0.2] [--normlab build/normlab]
        [--shapes 4096x1024,128x512,4x32,128x64x28x28] [--modules LayerNorm,RMSNorm]

Needs torch (>= 2.4 for nn.RMSNorm; older: RMSNorm rows are skipped) and the
normlab package (pip install .). Docs: docs/performance.md.
"""
import argparse
import os
import statistics
import subprocess
import time

import torch

import normlab
import normlab.torch as nt


def timeit(fn, repeats, min_time):
    fn()  # warm up
    fn()
    samples = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def modules(shape):
    C = shape[1]
    if len(shape) == 4:
        return [("BatchNorm2d", lambda: nt.BatchNorm2d(C), lambda: torch.nn.BatchNorm2d(C)),
                ("InstanceNorm2d", lambda: nt.InstanceNorm2d(C, affine=True),
                 lambda: torch.nn.InstanceNorm2d(C, affine=True))]
    out = [("LayerNorm", lambda: nt.LayerNorm(C), lambda: torch.nn.LayerNorm(C)),
           ("BatchNorm1d", lambda: nt.BatchNorm1d(C), lambda: torch.nn.BatchNorm1d(C))]
    if hasattr(torch.nn, "RMSNorm"):
        out.append(("RMSNorm", lambda: nt.RMSNorm(C), lambda: torch.nn.RMSNorm(C)))
    out.append(("GroupNorm", lambda: nt.GroupNorm(32, C), lambda: torch.nn.GroupNorm(32, C)))
    return out


def bare(name, x, g, w, b):
    """The kernels alone: the extension's forward call then its backward call, as
    normlab.torch's autograd function makes them, on buffers allocated once (no
    torch allocation, no autograd, no argument checks)."""
    raw = normlab._normlab
    N, C = x.shape[0], x.shape[1]
    S = x.numel() // max(N * C, 1)
    dbl, P = x.dtype == torch.float64, (lambda t: t.data_ptr())
    y, dx = torch.empty_like(x), torch.empty_like(x)
    dw, db = torch.zeros_like(w), torch.zeros_like(b)
    if name == "LayerNorm":
        st = x.new_empty(2 * N)  # referenced by f below: kept alive with it

        def f():
            m, r = P(st), P(st) + N * st.element_size()
            raw.raw_layer_norm(dbl, P(y), m, r, P(x), P(w), P(b), N, C, 1e-5)
            raw.raw_layer_norm_backward(dbl, P(dx), P(dw), P(db), P(g), P(x), m, r, P(w), N, C)
    elif name in ("BatchNorm1d", "BatchNorm2d"):
        st, rm, rv = x.new_empty(2 * C), x.new_zeros(C), x.new_ones(C)

        def f():
            raw.raw_batch_norm_train(dbl, P(y), P(st), P(x), P(w), P(b), P(rm), P(rv), N, C, S,
                                     0.1, 1e-5)
            raw.raw_batch_norm_backward(dbl, True, P(dx), P(dw), P(db), P(g), P(x), P(st), P(w),
                                        N, C, S)
    elif name == "RMSNorm":
        rstd = x.new_empty(N)

        def f():
            raw.raw_rms_norm(dbl, P(y), P(rstd), P(x), P(w), N, C, 1.1920928955078125e-07)
            raw.raw_rms_norm_backward(dbl, P(dx), P(dw), P(g), P(x), P(rstd), P(w), N, C)
    else:  # GroupNorm(32, C) or InstanceNorm2d (one group per channel)
        G = C if name == "InstanceNorm2d" else 32
        st = x.new_empty(2 * N * G)

        def f():
            m, r = P(st), P(st) + N * G * st.element_size()
            raw.raw_group_norm(dbl, P(y), m, r, P(x), P(w), P(b), N, C, S, G, 1e-5)
            raw.raw_group_norm_backward(dbl, P(dx), P(dw), P(db), P(g), P(x), m, r, P(w), N, C,
                                        S, G)
    return f


def torch_bare(name, x, g, w, b):
    """PyTorch's own kernels for the same work, without autograd: aten's
    native_layer_norm / native_batch_norm and their backward (under no_grad;
    torch.ops.aten adds a few us of Python dispatch to the backward call)."""
    aten = torch.ops.aten
    if name == "LayerNorm":
        C = x.shape[-1]

        def f():
            with torch.no_grad():
                _, m, r = torch.native_layer_norm(x, (C,), w, b, 1e-5)
                aten.native_layer_norm_backward(g, x, (C,), m, r, w, b, [True, True, True])
    elif name in ("BatchNorm1d", "BatchNorm2d"):
        rm, rv = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])

        def f():
            with torch.no_grad():
                _, m, r = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
                aten.native_batch_norm_backward(g, x, w, rm, rv, m, r, True, 1e-5,
                                                [True, True, True])
    else:
        return None
    return f


class _Identity(torch.autograd.Function):
    """The yardstick: the cheapest autograd.Function (clone forward, pass-through backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


KERNEL = {"LayerNorm": "layernorm", "BatchNorm1d": "batchnorm", "RMSNorm": "rmsnorm",
          "GroupNorm": "groupnorm"}


def cli_fwd_bwd(exe, shapes):
    """`normlab bench`'s fwd+bwd seconds per (kernel, N, D)."""
    out = subprocess.run([exe, "bench", "--csv", "--shapes", *[f"{n}x{d}" for n, d in shapes],
                          "--kernels", *KERNEL.values()], capture_output=True, text=True,
                         check=True).stdout
    table = {}
    for line in out.splitlines()[1:]:
        f = line.split(",")
        if f[5] == "fwd+bwd":
            table[(f[4], int(f[1]), int(f[2]))] = float(f[6])
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--shapes", default="4096x1024,128x512,4x32,128x64x28x28")
    ap.add_argument("--normlab", default="", help="a normlab executable for `normlab bench`")
    ap.add_argument("--modules", default="",
                    help="only these modules, comma-separated (e.g. LayerNorm; default: all)")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    cli = cli_fwd_bwd(args.normlab, [s for s in shapes if len(s) == 2]) \
        if args.normlab and os.path.exists(args.normlab) else {}
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); {normlab.build_summary()}")
    print(f"{'module':14} {'shape':>14} {'torch.nn us':>12} {'normlab.torch us':>17} "
          f"{'speedup':>8} {'bare kernels us':>16} {'overhead us':>12} {'normlab bench us':>17} "
          f"{'aten kernels us':>16} {'torch.nn overhead us':>21}")
    torch.manual_seed(0)
    for shape in shapes:
        x0 = torch.randn(shape) * 2 + 1
        g = torch.randn(shape)
        label = "x".join(str(d) for d in shape)
        xi = x0.clone().requires_grad_()

        def identity():
            xi.grad = None
            _Identity.apply(xi).backward(g)

        print(f"{'(identity Function)':14} {label:>14} {'':12} "
              f"{timeit(identity, args.repeats, args.min_time) * 1e6:17.1f}")
        for name, ours_f, theirs_f in modules(shape):
            if args.modules and name not in args.modules.split(","):
                continue
            times = {}
            for who, make in (("theirs", theirs_f), ("ours", ours_f)):
                m = make()
                x = x0.clone().requires_grad_()

                def step():
                    x.grad = None
                    for p in m.parameters():
                        p.grad = None
                    m(x).backward(g)

                times[who] = timeit(step, args.repeats, args.min_time)
            m = ours_f()
            w = m.weight.detach()
            b = m.bias.detach() if getattr(m, "bias", None) is not None else torch.zeros_like(w)
            kernel = timeit(bare(name, x0, g, w, b), args.repeats, args.min_time)
            c = cli.get((KERNEL.get(name), shape[0], shape[1])) if len(shape) == 2 else None
            tb = torch_bare(name, x0, g, w, b)
            aten = timeit(tb, args.repeats, args.min_time) if tb else float("nan")
            print(f"{name:14} {label:>14} {times['theirs'] * 1e6:12.1f} "
                  f"{times['ours'] * 1e6:17.1f} {times['theirs'] / times['ours']:8.2f} "
                  f"{kernel * 1e6:16.1f} {(times['ours'] - kernel) * 1e6:12.1f} "
                  f"{(c * 1e6 if c else float('nan')):17.1f} {aten * 1e6:16.1f} "
                  f"{(times['theirs'] - aten) * 1e6:21.1f}")


if __name__ == "__main__":
    main()
