#!/usr/bin/env python3
"""normlab against PyTorch on the same machine, in the same run.

Times PyTorch's F.layer_norm, F.batch_norm (training mode), F.rms_norm
(PyTorch >= 2.4; n/a for 1.13), F.group_norm and F.instance_norm (instance
statistics), forward and forward+backward, in float, for every PyTorch at hand: the current one
(scripts/torch-env's venv; eager and torch.compile) and Debian's 1.13
(python3-torch, when installed); runs `normlab bench` at the same shapes and
thread count, and prints one table: times, the speed-up of normlab over each
PyTorch, and each side's effective bandwidth as a percentage of its own plain
copy (PyTorch: Tensor.copy_; normlab: memcpy), all measured in this invocation.
It first prints the machine (CPU model and ISA), the ISA normlab's kernels
were built for, and each PyTorch's version and BLAS (see bench/machine.py).

Cache state, as in `normlab bench` (--cache): shapes whose x exceeds 1 MB are
timed "cold", cycling each call through a ring of buffer sets four times the
L3, so both libraries and both copies read from DRAM; smaller shapes "warm",
the same buffers every call.

    bench/compare_torch.py --threads 2 [--normlab build/normlab] [--no-compile]
    bench/compare_torch.py --shapes 32x128x1024 --kernels groupnorm,instancenorm

Shapes are NxD or NxCxL (x of shape (N, C, L)), as `normlab bench` takes them:
layer_norm then normalizes over (C, L) without affine, group_norm uses
G = gcd(C, 32) groups, and instance_norm on an NxD shape takes it as one
unbatched (C, L) = (N, D) sample without affine (PyTorch's reading of a 2-D
input), as normlab's bench does.

Any python3 runs it: each PyTorch is timed in a worker process of its own
interpreter (this file with --worker), kept alive over the rounds.

Hook for later comparisons: a function `section(args) -> list of row dicts`
appended to EXTRA_SECTIONS is run after the kernel table and printed with
print_rows().
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHAPES = "128x512,4096x1024,16384x768"
DEFAULT_KERNELS = "layernorm,batchnorm,rmsnorm,groupnorm,instancenorm"
KERNELS = DEFAULT_KERNELS.split(",")
EXTRA_SECTIONS = []  # functions section(args) -> list of row dicts (see module doc)


def parse_shapes(text):
    """NxD or NxCxL -> (n, d, l), l = 1 for NxD."""
    shapes = []
    for part in text.split(","):
        dims = part.split("x")
        if len(dims) not in (2, 3) or not all(v.isdigit() and int(v) > 0 for v in dims):
            sys.exit(f"compare_torch.py: error: --shapes: '{part}' is not NxD or NxCxL with "
                     "positive sizes")
        shapes.append(tuple(int(v) for v in dims) + ((1,) if len(dims) == 2 else ()))
    return shapes


def shape_text(n, d, l):
    return f"{n}x{d}" + (f"x{l}" if l != 1 else "")


def parse_kernels(text):
    kernels = text.split(",")
    for k in kernels:
        if k not in KERNELS:
            sys.exit(f"compare_torch.py: error: --kernels: unknown kernel '{k}' "
                     f"(expected some of {DEFAULT_KERNELS})")
    return kernels


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
    """PyTorch's copy and the chosen norms (training) at one shape, timed;
    each call takes the next of `sets` buffer sets (x, dy, out, x with grad).
    With compiled=True the norms go through torch.compile (compiled once,
    here, so compile time is not timed)."""

    def __init__(self, torch, n, d, sets, compiled=False, l=1, kernels=("layernorm", "batchnorm")):
        F = torch.nn.functional
        g = torch.Generator().manual_seed(0)
        shape = (n, d) if l == 1 else (n, d, l)
        x, dy = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        self.ring = [(x.clone(), dy.clone(), torch.empty_like(x), x.clone().requires_grad_())
                     for _ in range(sets)]
        self.at = 0
        weight = torch.rand(d, generator=g).add_(0.5).requires_grad_()
        bias = torch.rand(d, generator=g).sub_(0.5).requires_grad_()
        running_mean, running_var = torch.zeros(d), torch.ones(d)
        self.no_grad = torch.no_grad
        groups = math.gcd(d, 32)
        fns = {
            "layernorm": (lambda inp: F.layer_norm(inp, (d,), weight, bias, 1e-5)) if l == 1 else
                         (lambda inp: F.layer_norm(inp, (d, l), None, None, 1e-5)),
            "batchnorm": lambda inp: F.batch_norm(inp, running_mean, running_var, weight, bias,
                                                  True, 0.1, 1e-5),
            "groupnorm": lambda inp: F.group_norm(inp, groups, weight, bias, 1e-5),
            "instancenorm": (lambda inp: F.instance_norm(inp, None, None, weight, bias, True, 0.1,
                                                         1e-5)) if l > 1 else
                            (lambda inp: F.instance_norm(inp.unsqueeze(0), eps=1e-5).squeeze(0)),
        }
        # issue 10: RMSNorm (F.rms_norm, PyTorch >= 2.4; 1.13 has none: its column says n/a)
        if hasattr(F, "rms_norm"):
            fns["rmsnorm"] = (lambda inp: F.rms_norm(inp, (d,), weight, 1e-5)) if l == 1 else \
                             (lambda inp: F.rms_norm(inp, (d, l), None, 1e-5))
        self.fns = {k: fns[k] for k in kernels if k in fns}
        if compiled:
            self.fns = {k: torch.compile(f) for k, f in self.fns.items()}
            for f in self.fns.values():  # compile both graphs now: fwd (no grad) and fwd+bwd
                with self.no_grad():
                    f(x)
                f(self.ring[0][3]).backward(dy)

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
        """One sample of each: {"kernel pass": seconds}, and the copy's seconds."""
        times = {}
        copy_s = median_seconds(self.copy, 1, min_time)
        for name, fn in self.fns.items():
            with self.no_grad():
                times[f"{name} fwd"] = median_seconds(lambda: self.forward(fn), 1, min_time)
            times[f"{name} fwd+bwd"] = median_seconds(lambda: self.forward_backward(fn), 1,
                                                      min_time)
        return times, copy_s


def worker(threads):
    """--worker: one JSON request per stdin line {n, d, mode, min_time, compiled};
    one JSON answer per line {times, copy} (or {error}). The first line out
    says whether torch.compile works here."""
    import torch

    torch.set_num_threads(threads)
    ops = {}
    compile_error = ""
    try:
        f = torch.compile(lambda t: torch.nn.functional.layer_norm(t, (8,)))
        f(torch.randn(4, 8))
    except Exception as e:  # noqa: BLE001 - any failure means: not available here
        compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    print(json.dumps({"compile_error": compile_error}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        l, kernels = req.get("l", 1), tuple(req.get("kernels", ("layernorm", "batchnorm")))
        key = (req["n"], req["d"], l, req["mode"], req["compiled"], kernels)
        try:
            if key not in ops:
                ops[key] = TorchOps(torch, req["n"], req["d"],
                                    ring_sets(req["n"], req["d"] * l, req["mode"]),
                                    req["compiled"], l, kernels)
            times, copy_s = ops[key].sample(req["min_time"])
            print(json.dumps({"times": times, "copy": copy_s}), flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the driver, which names it
            print(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}), flush=True)


class Worker:
    """A --worker process of one PyTorch interpreter."""

    def __init__(self, interp, threads):
        self.interp = interp
        self.proc = subprocess.Popen([interp["python"], os.path.abspath(__file__), "--worker",
                                      "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=interp["env"])
        hello = self.proc.stdout.readline()
        if not hello:
            sys.exit(f"compare_torch.py: error: the worker of {interp['python']} did not start")
        self.compile_error = json.loads(hello)["compile_error"]

    def sample(self, n, d, mode, min_time, compiled, l=1, kernels=("layernorm", "batchnorm")):
        self.proc.stdin.write(json.dumps({"n": n, "d": d, "mode": mode, "min_time": min_time,
                                          "compiled": compiled, "l": l,
                                          "kernels": list(kernels)}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "worker died"}')
        if "error" in answer:
            return None, answer["error"]
        return answer, ""

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def normlab_sample(binary, threads, n, d, min_time, mode, l=1, kernels=("layernorm", "batchnorm")):
    """One sample of each from `normlab bench --csv`: {(kernel, pass): seconds}, copy seconds."""
    cmd = [binary, "bench", "--csv", "--threads", str(threads), "--repeats", "1", "--cache", mode,
           "--min-time", str(min_time), "--kernels", ",".join(kernels), "--shapes",
           shape_text(n, d, l)]
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


def kernel_rows(args, variants):
    """Rounds of samples per shape (each PyTorch variant, then normlab), so every
    side sees the same moments of a shared machine; medians over the rounds.
    variants: [(label, Worker, compiled)]."""
    rows = []
    kernels = parse_kernels(args.kernels)
    for n, d, l in parse_shapes(args.shapes):
        mode = cache_mode(n, d * l)
        samples = {label: {} for label, _, _ in variants}
        samples["normlab"] = {}
        copies = {label: [] for label in samples}
        failed = {}
        for _ in range(args.repeats):
            for label, w, compiled in variants:
                if label in failed:
                    continue
                answer, err = w.sample(n, d, mode, args.min_time, compiled, l, kernels)
                if answer is None:
                    failed[label] = err
                    print(f"compare_torch.py: {label} at {shape_text(n, d, l)}: {err}",
                          file=sys.stderr)
                    continue
                copies[label].append(answer["copy"])
                for key, sec in answer["times"].items():
                    samples[label].setdefault(key, []).append(sec)
            m, mc = normlab_sample(args.normlab, args.threads, n, d, args.min_time, mode, l,
                                   kernels)
            copies["normlab"].append(mc)
            for (kernel, pass_name), sec in m.items():
                samples["normlab"].setdefault(f"{kernel} {pass_name}", []).append(sec)
        for key in samples["normlab"]:
            kernel, pass_name = key.split()
            ratio = pass_bytes(pass_name, n, d * l) / pass_bytes("fwd", n, d * l)  # vs the copy
            n_s = statistics.median(samples["normlab"][key])
            nc = statistics.median(copies["normlab"])
            row = {"shape": shape_text(n, d, l), "cache": mode, "kernel": kernel, "pass": pass_name,
                   "normlab": fmt_time(n_s), "normlab %copy": f"{100 * ratio * nc / n_s:.0f}%"}
            for label, _, _ in variants:
                if label in failed or key not in samples[label]:
                    row[label] = "n/a"
                    row[f"x {label}"] = ""
                    continue
                t_s = statistics.median(samples[label][key])
                row[label] = f"{fmt_time(t_s)} ({100 * ratio * statistics.median(copies[label]) / t_s:.0f}%)"
                row[f"x {label}"] = f"{t_s / n_s:.2f}x"
            rows.append(row)
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


# ----------------------------------------------------------------------------- BatchNorm variants
# normlab's mean-only BatchNorm, Batch Renormalization and Ghost BatchNorm
# (training passes, `normlab bench --kernels meanonlybn,batchrenorm,ghostbn`)
# against PyTorch's BatchNorm1d (F.batch_norm in training: the nearest shipped
# layer) and against their PyTorch twins (python/normlab_torch.py, eager), in
# the current PyTorch, in rounds with normlab as the kernel table.

BN_FAMILY = (("meanonlybn", "MeanOnlyBatchNorm1d"), ("batchrenorm", "BatchRenorm1d"),
             ("ghostbn", "GhostBatchNorm1d"))


def bn_family_worker(threads):
    """--bn-family-worker: one JSON request per stdin line {n, d, mode, min_time};
    one answer {times: {"<kernel> <pass>": s}, copy: s}; kernels: batchnorm1d and the twins."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "python"))
    import normlab_torch
    torch.set_num_threads(threads)
    state = {}
    for line in sys.stdin:
        req = json.loads(line)
        n, d = req["n"], req["d"]
        try:
            if (n, d) not in state:
                g = torch.Generator().manual_seed(0)
                sets = ring_sets(n, d, req["mode"])
                x, dy = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
                ring = [(x.clone(), dy.clone(), torch.empty_like(x), x.clone().requires_grad_())
                        for _ in range(sets)]
                mods = {"batchnorm1d": torch.nn.BatchNorm1d(d),
                        "meanonlybn": normlab_torch.MeanOnlyBatchNorm1d(d),
                        "batchrenorm": normlab_torch.BatchRenorm1d(d),  # rmax 3, dmax 5
                        "ghostbn": normlab_torch.GhostBatchNorm1d(d, 32)}
                state[(n, d)] = (ring, mods, [0])
            ring, mods, at = state[(n, d)]

            def nxt():
                at[0] = (at[0] + 1) % len(ring)
                return ring[at[0]]

            def copy():
                x, _, out, _ = nxt()
                out.copy_(x)

            times = {}
            copy_s = median_seconds(copy, 1, req["min_time"])
            for name, m in mods.items():
                with torch.no_grad():
                    times[f"{name} fwd"] = median_seconds(lambda: m(nxt()[0]), 1, req["min_time"])

                def fb():
                    _, dy, _, xg = nxt()
                    m(xg).backward(dy)
                times[f"{name} fwd+bwd"] = median_seconds(fb, 1, req["min_time"])
            print(json.dumps({"times": times, "copy": copy_s}), flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the driver
            print(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}), flush=True)


def bn_family_section(args):
    import machine
    interp = machine.torch_interpreters(want_debian=False)[0]
    proc = subprocess.Popen([interp["python"], os.path.abspath(__file__), "--bn-family-worker",
                             "--threads", str(args.threads)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=interp["env"])
    rows = []
    label = f"{interp['short']} eager"
    for n, d, l in parse_shapes(args.shapes):
        if l != 1:  # the BatchNorm variants are timed on (N, C) shapes only
            continue
        mode = cache_mode(n, d)
        torch_s, torch_c, nl_s, nl_c = {}, [], {}, []
        for _ in range(args.repeats):
            proc.stdin.write(json.dumps({"n": n, "d": d, "mode": mode,
                                         "min_time": args.min_time}) + "\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline() or '{"error": "worker died"}')
            if "error" in answer:
                print(f"compare_torch.py: BatchNorm variants at {n}x{d}: {answer['error']}",
                      file=sys.stderr)
            else:
                torch_c.append(answer["copy"])
                for k, sec in answer["times"].items():
                    torch_s.setdefault(k, []).append(sec)
            cmd = [args.normlab, "bench", "--csv", "--threads", str(args.threads), "--repeats", "1",
                   "--cache", mode, "--min-time", str(args.min_time), "--kernels",
                   ",".join(k for k, _ in BN_FAMILY), "--shapes", f"{n}x{d}"]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"compare_torch.py: error: {' '.join(cmd)} failed:\n{run.stderr}")
            for row in csv.DictReader(io.StringIO(run.stdout)):
                if row["kernel"] == "copy":
                    nl_c.append(float(row["seconds"]))
                else:
                    nl_s.setdefault(f"{row['kernel']} {row['pass']}", []).append(float(row["seconds"]))
        med = statistics.median
        for kernel, twin in BN_FAMILY:
            for pass_name in ("fwd", "fwd+bwd"):
                key = f"{kernel} {pass_name}"
                ratio = pass_bytes(pass_name, n, d) / pass_bytes("fwd", n, d)
                ns = med(nl_s[key])
                row = {"shape": f"{n}x{d}", "cache": mode, "kernel": f"{kernel} ({twin})",
                       "pass": pass_name,
                       "normlab": f"{fmt_time(ns)} ({100 * ratio * med(nl_c) / ns:.0f}%)"}
                for col, tk in ((f"{label} BatchNorm1d", f"batchnorm1d {pass_name}"),
                                (f"{label} twin", key)):
                    if tk in torch_s:
                        ts = med(torch_s[tk])
                        row[col] = f"{fmt_time(ts)} ({100 * ratio * med(torch_c) / ts:.0f}%) {ts / ns:.2f}x"
                    else:
                        row[col] = "n/a"
                rows.append(row)
    proc.stdin.close()
    proc.wait()
    print("BatchNorm variants (training): normlab beside PyTorch's BatchNorm1d (the nearest "
          "shipped layer) and the variant's PyTorch twin; (nn%) of that side's copy; "
          "Nx = PyTorch's time / normlab's")
    return rows


EXTRA_SECTIONS.append(bn_family_section)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for all (default 2)")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of samples (each PyTorch, then normlab, per shape); medians shown")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per sample")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"NxD list (default {DEFAULT_SHAPES})")
    p.add_argument("--kernels", default=DEFAULT_KERNELS,
                   help=f"kernels to compare (default {DEFAULT_KERNELS})")
    p.add_argument("--normlab", default=os.path.join(REPO, "build", "normlab"),
                   help="the normlab executable (default: build/normlab)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--no-debian", action="store_true", help="leave Debian's PyTorch 1.13 out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bn-family-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-bn-family", action="store_true",
                   help="leave out the BatchNorm variants' table")
    args = p.parse_args()
    if not 1 <= args.threads <= 1024:
        p.error(f"--threads must be between 1 and 1024, got {args.threads}")
    if args.worker:
        worker(args.threads)
        return
    if args.bn_family_worker:
        bn_family_worker(args.threads)
        return
    if args.no_bn_family and bn_family_section in EXTRA_SECTIONS:
        EXTRA_SECTIONS.remove(bn_family_section)
    if not 1 <= args.repeats <= 1000:
        p.error(f"--repeats must be between 1 and 1000, got {args.repeats}")
    if not 0 < args.min_time <= 10:
        p.error(f"--min-time must be in (0, 10] seconds, got {args.min_time}")
    parse_shapes(args.shapes)
    parse_kernels(args.kernels)
    if not os.path.isfile(args.normlab) or not os.access(args.normlab, os.X_OK):
        p.error(f"--normlab: '{args.normlab}' is not an executable "
                "(build it with: scripts/build)")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine

    interps = machine.torch_interpreters(want_debian=not args.no_debian)
    variants = []
    for it in interps:
        w = Worker(it, args.threads)
        variants.append((f"{it['short']} eager", w, False))
        if it is interps[0] and not args.no_compile:
            if w.compile_error:
                print(f"compare_torch.py: torch.compile unavailable in {it['label']}: "
                      f"{w.compile_error}", file=sys.stderr)
            else:
                variants.append((f"{it['short']} compile", w, True))
    for line in machine.header_lines(interps, args.normlab, args.threads):
        print(line)
    print(f"float; median of {args.repeats} rounds; (nn%) = that side's effective GB/s as a "
          "percentage of its own copy's; Nx = PyTorch's time / normlab's")
    print_rows(kernel_rows(args, variants))
    for w in {id(w): w for _, w, _ in variants}.values():
        w.close()
    for section in EXTRA_SECTIONS:
        print()
        print_rows(section(args))


if __name__ == "__main__":
    main()
