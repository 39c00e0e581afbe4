#!/usr/bin/env python3
"""Training and the depth sweep side by side with PyTorch, in one invocation.

    bench/compare_training.py [--threads 2] [--epochs 1] [--repeats 3] [--data DIR]
        [--build build] [--no-compile] [--no-debian] [--skip-depth] [--model seed001]

--model cnn:norm=gn (or any preset/spec) times that model instead of seed001
(issue 11: the CNN; its floor adds the oneDNN convolution calls alone).

Runs, one after the other and --repeats times interleaved:
  * PyTorch: bench/torch_train.py (the seed-001 MLP from nn.Linear + weight_norm,
    LayerNorm, BatchNorm1d; Adam, batch 128, shuffled MNIST) under every PyTorch
    at hand (bench/machine.py): the current one from scripts/torch-env, eager and
    through torch.compile, and Debian's 1.13 when installed;
  * normlab: `normlab train --model seed001` with the same recipe;
  * the matrix-product floor: build/bench/normlab_epoch_floor, exactly the
    sgemm calls of one such epoch and nothing else;
  * the seed-000 depth sweep (5 architectures, depths 0-29, fresh networks, one
    seed): a PyTorch twin of the notebook's loop, and `normlab depth`;
and prints medians: seconds per epoch, speed-up over PyTorch, ratio to the
floor, and each process's peak resident memory (from wait4's rusage).
Every process gets the same thread count; none runs while another does.
It first prints the machine (CPU, ISA), normlab's build ISA and each PyTorch's
version and BLAS.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The PyTorch twin of the notebook's depth loop (docs/depth.md): fresh networks,
# 5 architectures x depths 0-29, one batch of 5 standard-normal 28x28 inputs.
TORCH_DEPTH = r'''
import sys, time, torch, torch.nn as nn
torch.set_num_threads(int(sys.argv[1]))
def ln_nobias(d):
    m = nn.LayerNorm(d); m.register_parameter("bias", None); return m
def mlp(kind, depth):
    layers, d = [nn.Flatten()], 784
    for _ in range(depth):
        if kind == "none": layers += [nn.Linear(d, 512, bias=False), nn.ReLU()]
        if kind == "bn-pre": layers += [nn.BatchNorm1d(d, affine=False), nn.Linear(d, 512), nn.ReLU()]
        if kind == "bn-post": layers += [nn.Linear(d, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU()]
        if kind == "ln-pre": layers += [ln_nobias(d), nn.Linear(d, 512), nn.ReLU()]
        if kind == "ln-post": layers += [nn.Linear(d, 512, bias=False), nn.LayerNorm(512), nn.ReLU()]
        d = 512
    return nn.Sequential(*layers, nn.Linear(d, 100, bias=False))
torch.manual_seed(0)
t = time.perf_counter()
x = torch.randn(5, 28, 28)
for kind in ["none", "bn-pre", "bn-post", "ln-pre", "ln-post"]:
    for depth in range(30):
        mlp(kind, depth)(x).norm().item()
print(f"sweep {time.perf_counter() - t:.4f} s")
'''


def run(cmd, env):
    """Runs cmd to completion; returns (output, wall seconds, peak RSS in MB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage, not all children's
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"compare_training: `{' '.join(cmd)}` failed with status {p.returncode}:\n{out}")
    return out, wall, usage.ru_maxrss / 1024.0  # Linux reports kilobytes


def numbers(pattern, text, what):
    found = [float(m) for m in re.findall(pattern, text)]
    if not found:
        sys.exit(f"compare_training: no {what} in this output:\n{text}")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per training run (1; 5 for the memory target)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved; medians are reported")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="normlab's build directory")
    ap.add_argument("--skip-depth", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--no-debian", action="store_true", help="leave Debian's PyTorch 1.13 out")
    ap.add_argument("--model", default="seed001", help="the model trained (a preset or spec; e.g. cnn:norm=gn)")
    args = ap.parse_args()
    if args.threads < 1 or args.epochs < 1 or args.repeats < 1:
        sys.exit("compare_training: --threads, --epochs and --repeats must be at least 1")
    normlab = os.path.join(args.build, "normlab")
    floor_tool = os.path.join(args.build, "bench", "normlab_epoch_floor")
    for path in (normlab, floor_tool):
        if not os.access(path, os.X_OK):
            sys.exit(f"compare_training: {path} not found; build first: "
                     "cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build")
    if not os.path.isdir(args.data):
        sys.exit(f"compare_training: no MNIST directory at {args.data} (give --data)")

    sys.path.insert(0, HERE)
    import machine

    interps = machine.torch_interpreters(want_debian=not args.no_debian)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    t = str(args.threads)
    out_dir = tempfile.mkdtemp(prefix="normlab-compare-")
    train_args = ["--model", args.model, "--epochs", str(args.epochs), "--threads", t,
                  "--data", args.data]
    jobs, envs, labels = {}, {}, {}
    for it in interps:
        key = f"torch {it['short']}"
        jobs[key] = [it["python"], os.path.join(HERE, "torch_train.py")] + train_args
        envs[key], labels[key] = dict(it["env"], OMP_NUM_THREADS=t), f"{it['label']} eager"
        if it is interps[0] and not args.no_compile:
            jobs[key + " compile"] = jobs[key] + ["--compile"]
            envs[key + " compile"] = envs[key]
            labels[key + " compile"] = f"{it['label']} torch.compile"
    jobs["normlab"] = [normlab, "train", "--model", args.model, "--epochs", str(args.epochs),
                       "--threads", t, "--data", args.data, "--out", out_dir, "--progress", "never"]
    # seed001's floor takes 3 repeats (a second each); a CNN epoch's floor is far longer.
    floor_repeats = 3 if args.model == "seed001" else args.repeats
    jobs["floor"] = [floor_tool, "--model", args.model, "--repeats", str(floor_repeats)]
    # A model with convolutions (the cnn preset, conv2d in a spec) has them in its floor too.
    has_conv = args.model.split(":")[0] == "cnn" or "conv2d" in args.model
    floor_label = "conv + matrix products alone (floor)" if has_conv else "matrix products alone (floor)"
    labels.update({"normlab": "normlab train", "floor": floor_label})
    if not args.skip_depth:
        for it in interps:
            key = f"depth {it['short']}"
            jobs[key] = [it["python"], "-c", TORCH_DEPTH, t]
            envs[key] = dict(it["env"], OMP_NUM_THREADS=t)
            labels[key] = f"{it['label']} (fresh nn.Sequential per depth)"
        jobs["normlab depth"] = [normlab, "depth", "--threads", t]
        labels["normlab depth"] = "normlab depth (whole process)"
    torch_time = r"test acc [0-9.]+%\s+([0-9.]+) s"
    patterns = {k: (r"sweep ([0-9.]+) s" if k.startswith("depth ") else torch_time)
                for k in jobs if k.startswith(("torch", "depth "))}
    patterns.update({"normlab": r"test acc [0-9.]+%\s+([0-9.]+) s \(",
                     "floor": r"floor_seconds=([0-9.]+)"})
    seconds = {k: [] for k in jobs}
    rss = {k: [] for k in jobs}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        for name, cmd in jobs.items():
            out, wall, peak = run(cmd, envs.get(name, env))
            # normlab depth's figure is the whole process, start-up included.
            seconds[name] += [wall] if name == "normlab depth" else numbers(patterns[name], out, name)
            rss[name].append(peak)
            print(f"  run {r + 1}/{args.repeats} {name:13s} {seconds[name][-1]:8.3f} s {peak:6.0f} MB",
                  file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    med = {k: statistics.median(v) for k, v in seconds.items()}
    peak = {k: max(v) for k, v in rss.items()}
    for line in machine.header_lines(interps, normlab, args.threads):
        print(line)
    print(f"load average {load_before:.2f} before, {load_after:.2f} after; "
          f"medians of {args.repeats} runs x {args.epochs} epoch(s)\n")
    base = f"torch {interps[0]['short']}"  # the current PyTorch, eager: the speed-ups' reference
    train_keys = [k for k in jobs if k.startswith("torch")] + ["normlab", "floor"]
    print(f"{args.model + ', one MNIST epoch (batch 128)':44s} {'s/epoch':>9s} "
          f"{'vs ' + interps[0]['short'] + ' eager':>14s} {'vs floor':>9s} {'peak RSS':>9s}")
    for k in train_keys:
        print(f"{labels[k]:44s} {med[k]:9.3f} {med[base] / med[k]:13.1f}x "
              f"{med[k] / med['floor']:8.2f}x {peak[k]:6.0f} MB")
    if not args.skip_depth:
        dbase = f"depth {interps[0]['short']}"
        print(f"\n{'seed000 depth sweep (5 archs, depths 0-29)':44s} {'seconds':>9s} "
              f"{'vs ' + interps[0]['short']:>14s} {'':>9s} {'peak RSS':>9s}")
        for k in [k for k in jobs if k.startswith("depth ")] + ["normlab depth"]:
            print(f"{labels[k]:44s} {med[k]:9.3f} {med[dbase] / med[k]:13.1f}x {'':>9s} "
                  f"{peak[k]:6.0f} MB")
    if load_before > args.threads + 0.5:
        print(f"\nwarning: the load average was {load_before:.1f} when this started: other jobs shared "
              "the CPUs, so the times are inflated (the ratios less so).")


if __name__ == "__main__":
    main()
