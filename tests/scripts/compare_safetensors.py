#!/usr/bin/env python3
"""compare_safetensors.py A B [--rtol R] [--atol A] [--keys REGEX]: every F32
tensor of A against B's (same names, same shapes), |a - b| <= atol + rtol |b|;
I64 tensors (num_batches_tracked, step) must be equal. Prints the worst
tensor; exit 1 on any difference. Plain Python (struct), no numpy: the
multi-process tests (mpi_train_test.sh) run it without PyTorch."""
import json, re, struct, sys


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = data[a:b]
        fmt = {"F32": "f", "I64": "q", "F64": "d"}[v["dtype"]]
        out[k] = (v["dtype"], v["shape"], struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))
    return out


def main():
    args = sys.argv[1:]
    rtol, atol, keys = 1e-4, 1e-5, None
    pos = []
    i = 0
    while i < len(args):
        if args[i] in ("--rtol", "--atol", "--keys"):
            if args[i] == "--rtol": rtol = float(args[i + 1])
            elif args[i] == "--atol": atol = float(args[i + 1])
            else: keys = re.compile(args[i + 1])
            i += 2
        else:
            pos.append(args[i]); i += 1
    a, b = read(pos[0]), read(pos[1])
    if keys:
        a = {k: v for k, v in a.items() if keys.search(k)}
        b = {k: v for k, v in b.items() if keys.search(k)}
    if sorted(a) != sorted(b):
        print(f"different keys: {sorted(set(a) ^ set(b))}")
        return 1
    bad, worst = [], (0.0, "")
    for k in sorted(a):
        (da, sa, va), (db, sb, vb) = a[k], b[k]
        if da != db or sa != sb:
            bad.append(f"{k}: {da}{sa} vs {db}{sb}")
            continue
        if da == "I64":
            if va != vb: bad.append(f"{k}: {va[:4]} vs {vb[:4]}")
            continue
        for j, (x, y) in enumerate(zip(va, vb)):
            err = abs(x - y)
            ratio = err / (atol + rtol * abs(y))
            if not ratio <= 1:
                bad.append(f"{k}[{j}]: {x!r} vs {y!r}")
                break
            if ratio > worst[0]:
                worst = (ratio, f"{k}[{j}]: {x!r} vs {y!r}")
    print(f"{len(a)} tensors; worst (fraction of the tolerance {worst[0]:.3f}): {worst[1]}")
    for line in bad[:10]:
        print("DIFFERS:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
