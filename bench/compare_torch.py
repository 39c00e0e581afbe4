#!/usr/bin/python3
"""normlab against PyTorch on the same machine, in the same run.

Times PyTorch's F.layer_norm and F.batch_norm (training mode), forward and
forward+backward, in float at the shapes of issue 4, runs `normlab bench` at
the same shapes and thread count, and prints one table: times, the speed-up of
normlab over PyTorch, and each side's effective bandwidth as a percentage of
its own plain copy (PyTorch: Tensor.copy_; normlab: memcpy), both measured in
this invocation.

Cache state, as in `normlab bench` (--cache): shapes whose x exceeds 1 MB are
timed "cold", cycling each call through a ring of buffer sets four times the
L3, so both libraries and both copies read from DRAM; smaller shapes "warm",
the same buffers every call.

    /usr/bin/python3 bench/compare_torch.py --threads 2 [--normlab build/normlab]

Needs Debian's python3-torch (1.13): run it with /usr/bin/python3. Its BLAS is
told to use AVX-512: OPENBLAS_CORETYPE is set to --openblas-coretype (default
SkylakeX, overriding the environment) before torch is imported.

Hook for later comparisons (e.g. one training epoch): a function
`section(args) -> list of row dicts` appended to EXTRA_SECTIONS is run after the
kernel table and printed with print_rows(); see kernel_rows() for the row keys.
"""
import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHAPES = "128x512,4096x1024,16384x768"
EXTRA_SECTIONS = []  # functions section(args) -> list of row dicts (see module doc)


def parse_shapes(text):
    shapes = []
    for part in text.split(","):
        n, sep, d = part.partition("x")
        if not sep or not n.isdigit() or not d.isdigit() or int(n) <= 0 or int(d) <= 0:
            sys.exit(f"compare_torch.py: error: --shapes: '{part}' is not NxD with positive N, D")
        shapes.append((int(n), int(d)))
    return shapes


def l3_bytes():
    """The L3 our CPU shares (sysfs), as normlab's bench reads it; 32 MB if unknown."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        unit = {"K": 1024, "M": 1024 * 1024}.get(text[-1], 1)
        return int(text.rstrip("KM")) * unit
    except (OSError, ValueError, IndexError):
        return 32 << 20


def cache_mode(n, d):
    return "cold" if n * d * 4 > (1 << 20) else "warm"


def ring_sets(n, d, mode):
    """Buffer sets per ring: as normlab's BufferRing (x + y per call, 4 L3s between reuses)."""
    if mode == "warm":
        return 1
    touched = 2 * n * d * 4
    return min(64, max(2, -(-4 * l3_bytes() // touched)))


def median_seconds(op, repeats, min_time):
    """Median over `repeats` samples of one call's time; a sample repeats op for min_time."""
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            op()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def pass_bytes(pass_name, n, d):
    """Bytes a pass must move: fwd = read x + write y; fwd+bwd adds read x, dy + write dx."""
    return (2 if pass_name == "fwd" else 5) * n * d * 4


class TorchOps:
    """PyTorch's copy, layer_norm and batch_norm (training) at one shape, timed;
    each call takes the next of `sets` buffer sets (x, dy, out, x with grad)."""

    def __init__(self, torch, n, d, sets):
        F = torch.nn.functional
        g = torch.Generator().manual_seed(0)
        x, dy = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        self.ring = [(x.clone(), dy.clone(), torch.empty_like(x), x.clone().requires_grad_())
                     for _ in range(sets)]
        self.at = 0
        weight = torch.rand(d, generator=g).add_(0.5).requires_grad_()
        bias = torch.rand(d, generator=g).sub_(0.5).requires_grad_()
        running_mean, running_var = torch.zeros(d), torch.ones(d)
        self.no_grad = torch.no_grad
        self.fns = {
            "layernorm": lambda inp: F.layer_norm(inp, (d,), weight, bias, 1e-5),
            "batchnorm": lambda inp: F.batch_norm(inp, running_mean, running_var, weight, bias,
                                                  True, 0.1, 1e-5),
        }

    def next(self):
        self.at = (self.at + 1) % len(self.ring)
        return self.ring[self.at]

    def copy(self):
        x, _, out, _ = self.next()
        out.copy_(x)

    def forward(self, fn):
        fn(self.next()[0])

    def forward_backward(self, fn):
        _, dy, _, xg = self.next()
        fn(xg).backward(dy)

    def sample(self, min_time):
        """One sample of each: {(kernel, pass): seconds}, and the copy's seconds."""
        times = {}
        copy_s = median_seconds(self.copy, 1, min_time)
        for name, fn in self.fns.items():
            with self.no_grad():
                times[(name, "fwd")] = median_seconds(lambda: self.forward(fn), 1, min_time)
            times[(name, "fwd+bwd")] = median_seconds(lambda: self.forward_backward(fn), 1,
                                                      min_time)
        return times, copy_s


def normlab_sample(binary, threads, n, d, min_time, mode):
    """One sample of each from `normlab bench --csv`: {(kernel, pass): seconds}, copy seconds."""
    cmd = [binary, "bench", "--csv", "--threads", str(threads), "--repeats", "1", "--cache", mode,
           "--min-time", str(min_time), "--kernels", "layernorm,batchnorm", "--shapes", f"{n}x{d}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"compare_torch.py: error: {' '.join(cmd)} failed ({run.returncode}):\n"
                 f"{run.stderr}")
    times, copy_s = {}, None
    for row in csv.DictReader(io.StringIO(run.stdout)):
        if row["kernel"] == "copy":
            copy_s = float(row["seconds"])
        else:
            times[(row["kernel"], row["pass"])] = float(row["seconds"])
    return times, copy_s


def kernel_rows(args):
    """Rounds of (PyTorch, normlab) samples per shape, so both sides see the same
    moments of a shared machine; medians over the rounds."""
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for n, d in parse_shapes(args.shapes):
        mode = cache_mode(n, d)
        ops = TorchOps(torch, n, d, ring_sets(n, d, mode))
        t_samples, n_samples, t_copy, n_copy = {}, {}, [], []
        for _ in range(args.repeats):
            t, tc = ops.sample(args.min_time)
            m, mc = normlab_sample(args.normlab, args.threads, n, d, args.min_time, mode)
            t_copy.append(tc)
            n_copy.append(mc)
            for key in t:
                t_samples.setdefault(key, []).append(t[key])
                n_samples.setdefault(key, []).append(m[key])
        tc, nc = statistics.median(t_copy), statistics.median(n_copy)
        for (kernel, pass_name), ts in t_samples.items():
            t_s, n_s = statistics.median(ts), statistics.median(n_samples[(kernel, pass_name)])
            ratio = pass_bytes(pass_name, n, d) / pass_bytes("fwd", n, d)  # bytes vs the copy's
            rows.append({
                "shape": f"{n}x{d}", "cache": mode, "kernel": kernel, "pass": pass_name,
                "torch": fmt_time(t_s), "normlab": fmt_time(n_s),
                "speed-up": f"{t_s / n_s:.2f}x",
                "torch %copy": f"{100 * ratio * tc / t_s:.0f}%",
                "normlab %copy": f"{100 * ratio * nc / n_s:.0f}%",
                "copy GB/s t/n": f"{pass_bytes('fwd', n, d) / tc / 1e9:.1f}/"
                                 f"{pass_bytes('fwd', n, d) / nc / 1e9:.1f}",
            })
    return rows


def fmt_time(seconds):
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def print_rows(rows):
    if not rows:
        return
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(width[k]) for k in keys))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of samples (PyTorch, then normlab, per shape); medians shown")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per sample")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"NxD list (default {DEFAULT_SHAPES})")
    p.add_argument("--normlab", default=os.path.join(REPO, "build", "normlab"),
                   help="the normlab executable (default: build/normlab)")
    p.add_argument("--openblas-coretype", default="SkylakeX",
                   help="OPENBLAS_CORETYPE for PyTorch's BLAS (default SkylakeX: AVX-512)")
    args = p.parse_args()
    os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype  # read when torch loads OpenBLAS
    if not 1 <= args.threads <= 1024:
        p.error(f"--threads must be between 1 and 1024, got {args.threads}")
    if not 1 <= args.repeats <= 1000:
        p.error(f"--repeats must be between 1 and 1000, got {args.repeats}")
    if not 0 < args.min_time <= 10:
        p.error(f"--min-time must be in (0, 10] seconds, got {args.min_time}")
    parse_shapes(args.shapes)
    if not os.path.isfile(args.normlab) or not os.access(args.normlab, os.X_OK):
        p.error(f"--normlab: '{args.normlab}' is not an executable "
                "(build it with: ninja -C build normlab)")
    try:
        import torch
    except ImportError:
        sys.exit("compare_torch.py: error: PyTorch is not importable; run with /usr/bin/python3 "
                 "(Debian's python3-torch)")
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads) vs normlab, float, "
          f"{args.threads} thread(s), "
          f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}; median of {args.repeats}; "
          "%copy = effective GB/s / the same side's copy GB/s")
    print_rows(kernel_rows(args))
    for section in EXTRA_SECTIONS:
        print()
        print_rows(section(args))


if __name__ == "__main__":
    main()
