#!/usr/bin/env python3
"""Does PyTorch load normlab's model.safetensors, and compute what normlab computed?

Builds by hand, in PyTorch, the small network of tests/test_checkpoint.cpp:

    Sequential(Linear(4, 6), BatchNorm1d(6), ReLU(), LayerNorm(6),
               weight_norm(Linear(6, 5)), ReLU(), weight_norm(Linear(5, 3), dim=None))

has normlab's test binary write its model.safetensors and the input and outputs
of a forward pass (test Checkpoint.ExportForPyTorch with NORMLAB_TORCH_EXPORT_DIR),
then runs model.load_state_dict(load_file(...), strict=True), the same input in
eval mode (running statistics) and in training mode (batch statistics), and
compares outputs and the updated running statistics with normlab's.

Run with Debian's Python, which has torch:
    /usr/bin/python3 tests/torch/check_load_state_dict.py [--build build]
Exits 0 on success and when torch is missing (prints SKIP), 1 on a mismatch.
Not part of ctest: the test suite must not need PyTorch.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import torch
except ImportError:
    print("SKIP: torch is not installed (use /usr/bin/python3 with Debian's python3-torch)")
    sys.exit(0)

try:
    from safetensors.torch import load_file
    LOADER = "safetensors.torch"
except ImportError:
    print("SKIP: the safetensors package is not installed (pip install safetensors)")
    sys.exit(0)

RTOL, ATOL = 1e-5, 1e-5


def torch_model():
    wn = torch.nn.utils.weight_norm
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.LayerNorm(6),
        wn(torch.nn.Linear(6, 5)), torch.nn.ReLU(), wn(torch.nn.Linear(5, 3), dim=None))


def export(build, out_dir):
    binary = os.path.join(build, "tests", "normlab_tests")
    if not os.access(binary, os.X_OK):
        sys.exit(f"error: {binary} not found; build first (cmake -S . -B build -G Ninja && ninja -C build)")
    env = dict(os.environ, NORMLAB_TORCH_EXPORT_DIR=out_dir)
    run = subprocess.run([binary, "--gtest_filter=Checkpoint.ExportForPyTorch"], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: {binary} failed:\n{run.stdout}{run.stderr}")


def compare(what, ours, theirs, failures):
    ok = torch.allclose(theirs, ours, rtol=RTOL, atol=ATOL)
    diff = (theirs.double() - ours.double()).abs().max().item() if ours.numel() else 0.0
    print(f"  {what:28s} max |torch - normlab| = {diff:.3g}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        failures.append(what)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"), help="normlab build dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        export(args.build, tmp)
        state = load_file(os.path.join(tmp, "model.safetensors"))
        io = load_file(os.path.join(tmp, "io.safetensors"))

    net = torch_model()
    expected = net.state_dict()
    print(f"torch {torch.__version__}, loader {LOADER}")
    print(f"  keys: {list(state)}")
    for k, v in expected.items():  # load_state_dict would silently cast a wrong dtype
        if k in state and state[k].dtype != v.dtype:
            sys.exit(f"FAIL: {k} has dtype {state[k].dtype}, PyTorch's is {v.dtype}")
    net.load_state_dict(state, strict=True)
    print("  load_state_dict(strict=True): ok")

    failures = []
    with torch.no_grad():
        net.eval()
        compare("eval output", io["y_eval"], net(io["x"]), failures)
        net.train()
        compare("train output", io["y_train"], net(io["x"]), failures)
    bn = net[1]
    compare("running_mean after", io["running_mean_after"], bn.running_mean, failures)
    compare("running_var after", io["running_var_after"], bn.running_var, failures)
    if bn.num_batches_tracked.item() != io["num_batches_tracked_after"].item():
        failures.append("num_batches_tracked")
    print(f"  num_batches_tracked after    torch {bn.num_batches_tracked.item()}, "
          f"normlab {io['num_batches_tracked_after'].item()}")
    if failures:
        print("FAIL:", ", ".join(failures))
        return 1
    print("PASS: PyTorch loads normlab's model.safetensors and reproduces its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
