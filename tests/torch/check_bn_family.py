#!/usr/bin/env python3
"""Does a normlab model with the BatchNorm variants load into its PyTorch twin
(python/normlab_torch.py) and give the same test loss?

Trains `normlab train` briefly on MNIST with mean-only BN, Batch Renorm and
Ghost BN in one model (on (N, C) and, with BatchNorm2d and InstanceNorm2d, on
(N, C, H, W)), loads its model.safetensors into
normlab_torch.build_module(spec) with load_state_dict(strict=True), and
compares the eval-mode test loss and accuracy on the 10000 test images with
`normlab eval`'s. Needs PyTorch (run with the venv's python or Debian's
python3) and MNIST; not part of ctest.

    tests/torch/check_bn_family.py [--normlab build/normlab] [--mnist ../shared/data/mnist]
"""
import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import normlab_torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

SPECS = [
    ("flatten, linear(64), meanonlybn, relu, linear(32), batchrenorm(rmax=2, dmax=1), relu, "
     "linear(16), ghostbatchnorm(virtual_batch_size=16), relu, linear(10)"),
    # issue 11: the variants on (N, C, H, W), beside BatchNorm2d and InstanceNorm2d
    ("flatten, unflatten(4, 14, 14), meanonlybn, batchrenorm(rmax=2, dmax=1), "
     "ghostbatchnorm(virtual_batch_size=16), batchnorm2d, "
     "instancenorm2d(affine=true, track_running_stats=true), flatten, linear(10)"),
]


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check(a, spec):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([a.normlab, "train", "--data", a.mnist, "--model", spec, "--epochs", "1",
                        "--limit-train", "6400", "--batch-size", "64", "--out", tmp,
                        "--progress", "never"], check=True, capture_output=True)
        ev = subprocess.run([a.normlab, "eval", os.path.join(tmp, "model.safetensors"), "--data",
                             a.mnist], check=True, capture_output=True, text=True).stdout
        loss, acc = map(float, re.search(r"loss ([0-9.]+)\s+accuracy ([0-9.]+)%", ev).groups())
        module = normlab_torch.build_module(spec, (28, 28))
        module.load_state_dict(load_file(os.path.join(tmp, "model.safetensors")),
                               strict=True)
    module.eval()
    x = torch.from_numpy(idx(os.path.join(a.mnist, "t10k-images-idx3-ubyte.gz")).astype(np.float32)) / 255
    y = torch.from_numpy(idx(os.path.join(a.mnist, "t10k-labels-idx1-ubyte.gz")).astype(np.int64))
    with torch.no_grad():
        out = module(x)
    t_loss = F.cross_entropy(out, y).item()
    t_acc = 100 * (out.argmax(1) == y).float().mean().item()
    print(f"{spec}\n  normlab eval: loss {loss:.4f} accuracy {acc:.2f}%; PyTorch twin: loss "
          f"{t_loss:.4f} accuracy {t_acc:.2f}%")
    ok = abs(t_loss - loss) < 1e-3 and abs(t_acc - acc) < 0.05
    print("  ok" if ok else "  MISMATCH")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--normlab", default=os.path.join(ROOT, "build", "normlab"))
    ap.add_argument("--mnist", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    a = ap.parse_args()
    ok = all([check(a, spec) for spec in SPECS])
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
