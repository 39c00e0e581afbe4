#!/usr/bin/env python3
"""normlab.torch's modules against torch.nn's in one process, on the same tensors:
forward+backward (y = m(x); y.backward(g)) of LayerNorm, BatchNorm1d (training),
RMSNorm and GroupNorm(32, C), float32, at 4096x1024 and 128x512 (the seed
network's), median of --repeats samples of --min-time seconds each.

The per-call overhead of normlab.torch is its fwd+bwd time minus the bare
kernels' time, measured in the same process: normlab.native_*(_backward) on
NumPy arrays of the same shape (the same compiled kernels through the
extension's thin call, ~1 us of it nanobind). `normlab bench`'s fwd+bwd (its own
build, possibly other SIMD flags) is shown beside it when --normlab is given.

    python bench/compare_python.py [--repeats 7] [--min-time 0.2] [--normlab build/normlab]

Needs torch (>= 2.4 for nn.RMSNorm; older: RMSNorm rows are skipped) and the
normlab package (pip install .). Docs: docs/performance.md.
"""
import argparse
import os
import statistics
import subprocess
import time

import numpy as np
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


def modules(C):
    out = [("LayerNorm", lambda: nt.LayerNorm(C), lambda: torch.nn.LayerNorm(C)),
           ("BatchNorm1d", lambda: nt.BatchNorm1d(C), lambda: torch.nn.BatchNorm1d(C))]
    if hasattr(torch.nn, "RMSNorm"):
        out.append(("RMSNorm", lambda: nt.RMSNorm(C), lambda: torch.nn.RMSNorm(C)))
    out.append(("GroupNorm", lambda: nt.GroupNorm(32, C), lambda: torch.nn.GroupNorm(32, C)))
    return out


def bare(name, x, g, w, b):
    """The kernels alone on NumPy arrays: forward then backward, as the module does."""
    N, C = x.shape
    if name == "LayerNorm":
        def f():
            _, mean, rstd = normlab.native_layer_norm(x, (C,), w, b, 1e-5)
            normlab.native_layer_norm_backward(g, x, (C,), mean, rstd, w, b)
    elif name == "BatchNorm1d":
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

        def f():
            _, sm, si = normlab.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
            normlab.native_batch_norm_backward(g, x, w, rm, rv, sm, si, True, 1e-5)
    elif name == "RMSNorm":
        def f():
            _, rstd = normlab.native_rms_norm(x, (C,), w, None)
            normlab.native_rms_norm_backward(g, x, (C,), rstd, w)
    else:
        def f():
            _, mean, rstd = normlab.native_group_norm(x, w, b, N, C, 1, 32, 1e-5)
            normlab.native_group_norm_backward(g, x, mean, rstd, w, N, C, 1, 32)
    return f


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
    ap.add_argument("--shapes", default="4096x1024,128x512")
    ap.add_argument("--normlab", default="", help="a normlab executable for `normlab bench`")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    cli = cli_fwd_bwd(args.normlab, shapes) if args.normlab and os.path.exists(args.normlab) else {}
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); {normlab.build_summary()}")
    print(f"{'module':12} {'shape':>10} {'torch.nn us':>12} {'normlab.torch us':>17} "
          f"{'speedup':>8} {'bare kernels us':>16} {'overhead us':>12} {'normlab bench us':>17}")
    torch.manual_seed(0)
    for N, C in shapes:
        x0 = torch.randn(N, C) * 2 + 1
        g = torch.randn(N, C)
        for name, ours_f, theirs_f in modules(C):
            times = {}
            for label, make in (("theirs", theirs_f), ("ours", ours_f)):
                m = make()
                x = x0.clone().requires_grad_()

                def step():
                    x.grad = None
                    for p in m.parameters():
                        p.grad = None
                    m(x).backward(g)

                times[label] = timeit(step, args.repeats, args.min_time)
            m = ours_f()
            w = m.weight.detach().numpy()
            b = m.bias.detach().numpy() if getattr(m, "bias", None) is not None else None
            kernel = timeit(bare(name, x0.numpy(), g.numpy(), w, b), args.repeats, args.min_time)
            c = cli.get((KERNEL[name], N, C))
            print(f"{name:12} {f'{N}x{C}':>10} {times['theirs'] * 1e6:12.1f} "
                  f"{times['ours'] * 1e6:17.1f} {times['theirs'] / times['ours']:8.2f} "
                  f"{kernel * 1e6:16.1f} {(times['ours'] - kernel) * 1e6:12.1f} "
                  f"{(c * 1e6 if c else float('nan')):17.1f}")


if __name__ == "__main__":
    main()
