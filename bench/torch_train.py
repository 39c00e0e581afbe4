#!/usr/bin/env python3
"""PyTorch twin of `normlab train` for the seed-001 network: the same data,
recipe (Adam 1e-3, batch 128, shuffled), and per-epoch test accuracy and seconds.

    $(scripts/torch-env) bench/torch_train.py --model seed001 --epochs 5 [--compile]

Runs under any PyTorch (the current one from scripts/torch-env, or Debian's
1.13 with /usr/bin/python3). With --compile the model goes through
torch.compile; the compilation (for the full and the last, partial batch) is
done before the first epoch's clock starts. It prints the machine and its
PyTorch's version and BLAS first (bench/machine.py); when run alone it sets
OPENBLAS_CORETYPE for the CPU at hand, as compare_training.py does.
"""
import argparse, gzip, os, struct, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine

if "OPENBLAS_CORETYPE" not in os.environ and "NORMLAB_BENCH_CHILD" not in os.environ:
    # OpenBLAS reads it when torch loads it: set it, then re-run this script.
    os.execve(sys.executable, [sys.executable] + sys.argv,
              dict(machine.openblas_env(), NORMLAB_BENCH_CHILD="1"))

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return torch.frombuffer(bytearray(data[4 + 4 * rank:]), dtype=torch.uint8).reshape(dims)


def load(dir, split):
    prefix = "train" if split == "train" else "t10k"
    def find(name):
        for cand in (name, name + ".gz"):
            p = os.path.join(dir, cand)
            if os.path.exists(p):
                return p
        sys.exit(f"torch_train: {name} not found in {dir}")
    x = read_idx(find(f"{prefix}-images-idx3-ubyte")).reshape(-1, 784).float() / 255.0
    y = read_idx(find(f"{prefix}-labels-idx1-ubyte")).long()
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="seed001")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="train through torch.compile")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from normlab_torch import build_module
    model = build_module(args.model, (784,))
    xtr, ytr = load(args.data, "train")
    xte, yte = load(args.data, "test")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"machine: {machine.machine_line(args.threads)}; PyTorch {torch.__version__}"
          f"{' (torch.compile)' if args.compile else ''}", flush=True)
    if args.compile:
        train_model = torch.compile(model)
        # Compile for both batch sizes an epoch has, outside the timed epochs;
        # the weights are restored afterwards.
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        for size in sorted({args.batch_size, len(xtr) % args.batch_size} - {0}):
            F.cross_entropy(train_model(xtr[:size]), ytr[:size]).backward()
        model.load_state_dict(saved)
        opt.zero_grad()
    else:
        train_model = model
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr))
        total = 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i:i + args.batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(train_model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            logits = model(xte)
            acc = (logits.argmax(1) == yte).float().mean().item()
            test_loss = F.cross_entropy(logits, yte).item()
        print(f"epoch {epoch}  train loss {total / len(xtr):.4f}  test loss {test_loss:.4f}  "
              f"test acc {100 * acc:.2f}%  {train_s:.2f} s", flush=True)


if __name__ == "__main__":
    main()
