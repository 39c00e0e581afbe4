#!/usr/bin/env python3
"""PyTorch time for the runs of `normlab study bn-paper` (Ioffe & Szegedy 2015, Figure 1).

The same two networks (784-100-100-100-10 sigmoid MLP, without and with
BatchNorm1d before each sigmoid), Linear weights N(0, 0.1^2) and zero biases,
plain SGD lr 0.5, batch 60, STEPS steps, test accuracy on the 10,000 test
images every 500 steps plus the 15/50/85th percentiles of one sigmoid input
over 1000 test images (eval mode) -- what normlab records. Like normlab's study
it runs the two networks side by side, one thread each (two processes), and
prints the wall time of the pair and of each run.

    /work/main/.venv-torch/bin/python bench/torch_study.py [--steps 50000] [--mnist DIR]

Not needed by the tests; MNIST is read from the IDX files (raw or .gz).
"""
import argparse
import gzip
import multiprocessing as mp
import os
import struct
import time

import numpy as np


def read_idx(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            data = gzip.open(p).read() if p.endswith(".gz") else open(p, "rb").read()
            ndim = data[3]
            dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise FileNotFoundError(path)


def run(args):
    bn, steps, mnist = args
    import torch
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xtr = torch.from_numpy(read_idx(f"{mnist}/train-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255)
    ytr = torch.from_numpy(read_idx(f"{mnist}/train-labels-idx1-ubyte").astype(np.int64))
    xte = torch.from_numpy(read_idx(f"{mnist}/t10k-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255)
    yte = torch.from_numpy(read_idx(f"{mnist}/t10k-labels-idx1-ubyte").astype(np.int64))
    layers = []
    d = 784
    for _ in range(3):
        layers += [nn.Linear(d, 100, bias=not bn)] + ([nn.BatchNorm1d(100)] if bn else []) + [nn.Sigmoid()]
        d = 100
    layers.append(nn.Linear(100, 10))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    probe = 7 if bn else 4
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()

    def record():
        model.eval()
        with torch.no_grad():
            h = xte
            for i, m in enumerate(model):
                h = m(h)
                if i == probe:
                    torch.quantile(h[:1000, 0], torch.tensor([0.15, 0.5, 0.85]))
            acc = (h.argmax(1) == yte).float().mean().item()
        model.train()
        return acc

    record()
    n = xtr.shape[0]
    perm = torch.randperm(n)
    pos = 0
    acc = 0.0
    for step in range(1, steps + 1):
        if pos + 60 > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + 60]
        pos += 60
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps:
            acc = record()
    return ("with BN" if bn else "without BN", time.perf_counter() - t0, acc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50000)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--mnist", default=os.path.join(here, "..", "..", "shared", "data", "mnist"))
    a = ap.parse_args()
    import torch
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(run, [(False, a.steps, a.mnist), (True, a.steps, a.mnist)])
    wall = time.perf_counter() - t0
    print(f"PyTorch {torch.__version__}, bn-paper runs, {a.steps} steps each, 2 processes x 1 thread")
    for name, sec, acc in results:
        print(f"  {name}: {sec:.1f} s, final test accuracy {100 * acc:.2f}%")
    print(f"  both (side by side, including start-up and data loading): {wall:.1f} s")


if __name__ == "__main__":
    main()
