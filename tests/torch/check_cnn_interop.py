#!/usr/bin/env python3
"""A CNN trained by normlab loads into its PyTorch twin and scores the same.

Trains `normlab train --model cnn:norm=NORM` for a short run on MNIST, loads its
model.safetensors into python/normlab_torch.py's module for the same preset with
load_state_dict(strict=True), evaluates the 10000 test images in eval mode
(pixels / 255, as normlab's loader) and compares the accuracy with
`normlab eval` on the same file. Needs PyTorch >= 2 and safetensors (the
venv of scripts/torch-env); not part of ctest.

    .venv-torch/bin/python tests/torch/check_cnn_interop.py [--normlab build/normlab]
        [--data ../shared/data/mnist] [--norm gn] [--limit-train 6400]
"""
import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import normlab_torch  # noqa: E402


def idx(path):
    with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--normlab", default=os.path.join(ROOT, "build", "normlab"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    ap.add_argument("--norm", default="gn")
    ap.add_argument("--limit-train", default="6400")
    a = ap.parse_args()
    preset = f"cnn:norm={a.norm}"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([a.normlab, "train", "--data", a.data, "--model", preset, "--epochs", "1",
                        "--limit-train", a.limit_train, "--seed", "1", "--out", tmp,
                        "--progress", "never"], check=True)
        model_file = os.path.join(tmp, "model.safetensors")
        out = subprocess.run([a.normlab, "eval", model_file, "--data", a.data], check=True,
                             capture_output=True, text=True).stdout
        normlab_acc = float(re.search(r"accuracy ([0-9.]+)", out).group(1))
        module = normlab_torch.build_module(preset, [784])
        module.load_state_dict(load_file(model_file), strict=True)
    module.eval()
    name = lambda f: os.path.join(a.data, f + ("" if os.path.exists(os.path.join(a.data, f)) else ".gz"))
    x = torch.from_numpy(idx(name("t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32)) / 255
    y = torch.from_numpy(idx(name("t10k-labels-idx1-ubyte")).astype(np.int64))
    with torch.no_grad():
        pred = torch.cat([module(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    torch_acc = 100.0 * (pred == y).float().mean().item()
    print(f"{preset}: normlab eval {normlab_acc:.2f} %, PyTorch twin (strict load) {torch_acc:.2f} %")
    if abs(torch_acc - normlab_acc) > 0.05:
        sys.exit("accuracies differ")


if __name__ == "__main__":
    main()
