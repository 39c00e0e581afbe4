#!/usr/bin/python3
"""Checks that normlab models and their PyTorch twins have the same state_dict.

For each spec below it compares, key by key and in order, the state_dict
keys and shapes printed by `normlab model SPEC --keys` with those of
python/normlab_torch.py's module, and, for the presets, with modules written
exactly as in the two notebooks (seeds/000 and seeds/001) and with the
standard-layer network the seed001 preset stands for. A normlab checkpoint
with these keys loads into those modules with load_state_dict.

Needs PyTorch (Debian's python3-torch: run with /usr/bin/python3); not part of
ctest.  Usage: tests/torch/check_spec_keys.py [--normlab build/normlab]
"""

import argparse
import math
import os
import subprocess
import sys
from collections import OrderedDict

import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import normlab_torch  # noqa: E402

SPECS = [
    ("seed001", "784"),
    ("seed001-notebook", "784"),
    ("none:depth=4,width=64,out=100", "28x28"),
    ("bn-pre:depth=3,width=512,out=100", "28x28"),
    ("bn-post:depth=2", "28x28"),
    ("ln-pre:depth=2,width=32", "784"),
    ("ln-post:depth=0", "28x28"),
    ("flatten, wnlinear(512), relu, layernorm, wnlinear(512), relu, batchnorm, wnlinear(256), relu, layernorm, wnlinear(10)", "28x28"),
    ("linear(20, bias=false), bn(affine=false, momentum=none), relu, ln(elementwise_affine=false), linear(5)", "12"),
    ("wnlinear(8, dim=none), bn(track_running_stats=false), ln(bias=false, eps=1e-3), wnlinear(8, bias=false)", "16"),
    ("head: [flatten, linear(16)], relu, 7: nb_wnlinear(4, bias=false), nb_layernorm, nb_batchnorm", "4x4"),
    ("linear(6), bn", "3x5"),  # BatchNorm1d on (N, C, L)
    ("wnlinear(7, dim=1), relu, wnlinear(5, dim=-1), wnlinear(4, dim=-2, bias=false)", "9"),
    # issue 10: rmsnorm, and layernorm / rmsnorm over several trailing dims
    ("rmsnorm(shape=28x28, eps=1e-6), ln(dims=2, bias=false), flatten, rmsnorm(784, eps=none), "
     "linear(10), rmsnorm(elementwise_affine=false)", "28x28"),
    ("layernorm(shape=3x4x5), rmsnorm(dims=3), flatten, linear(8), rmsnorm", "3x4x5"),
    ("flatten, linear(64), gn(8), relu, groupnorm(1, 64, affine=false, eps=1e-3), linear(10)", "28x28"),
    ("gn(4, 28), in(28, affine=true, track_running_stats=true), instancenorm1d(momentum=none), flatten, linear(10)", "28x28"),
    ("unflatten(28, 28), in(track_running_stats=true), in(affine=true), flatten, linear(10)", "784"),
    # BatchNorm variants
    ("wnlinear(8), meanonlybn, relu, mean_only_batchnorm(affine=false), mean_only_batchnorm(track_running_stats=false)", "12"),
    ("linear(8), batchrenorm(rmax=2, dmax=1, schedule=paper), brn(affine=false, momentum=none)", "12"),
    ("linear(8), ghostbatchnorm(virtual_batch_size=4), gbn(affine=false, track_running_stats=false)", "12"),
    ("linear(6), meanonlybn, brn, gbn(virtual_batch_size=2)", "3x5"),
    # SyncBatchNorm (issue 13): torch.nn.SyncBatchNorm's keys
    ("flatten, linear(8), syncbn, relu, syncbatchnorm(affine=false, momentum=none), syncbn(8, track_running_stats=false)", "12"),
    # issue 13, part 2: SyncBatchNorm on (N, C, H, W), as PyTorch's takes (N, C, *)
    ("unflatten(2, 2, 3), syncbn, syncbatchnorm(2, affine=false), flatten, linear(4)", "12"),
    # issue 11: the norms on (N, C, H, W)
    ("unflatten(4, 7, 28), batchnorm2d(4), bn2d(affine=false, momentum=none), instancenorm2d, "
     "in2d(affine=true, track_running_stats=true), gn(2), layernorm(dims=3), meanonlybn, brn, "
     "gbn(virtual_batch_size=2), flatten, linear(10)", "784"),
    # issue 11: convolution, pooling, the cnn preset
    ("cnn", "784"),
    ("cnn:norm=gn", "784"),
    ("cnn:norm=ln", "784"),
    ("cnn:norm=bn", "784"),
    ("cnn:norm=in", "784"),
    ("unflatten(1, 28, 28), conv2d(8, 3x5, stride=2, padding=1x2, dilation=2, bias=false), "
     "maxpool2d(3, stride=1, padding=1, dilation=2), conv2d(8, 1, groups=4), avgpool2d(2x3, count_include_pad=false), "
     "adaptiveavgpool2d(2x3), flatten, linear(10)", "784"),
    # Sigmoid (the bn-paper study)
    ("linear(100), sigmoid, linear(100, bias=false), bn, sigmoid, linear(10)", "784"),
]


# ----------------------------------------------------------------- the notebooks' own modules


class MLP000(nn.Module):
    """seeds/000's MLPNoBIas / MLPBNPre / MLPBNPos / LN variants, by `kind`."""

    def __init__(self, kind, input_dim, hidden_dim, output_dim):
        super().__init__()
        layers = [nn.Flatten()]
        in_dim = input_dim
        for h_dim in hidden_dim:
            if kind == "none":
                layers += [nn.Linear(in_dim, h_dim, bias=False), nn.ReLU()]
            elif kind == "bn-pre":
                layers += [nn.BatchNorm1d(in_dim, affine=False), nn.Linear(in_dim, h_dim), nn.ReLU()]
            elif kind == "bn-post":
                layers += [nn.Linear(in_dim, h_dim, bias=False), nn.BatchNorm1d(h_dim), nn.ReLU()]
            elif kind == "ln-pre":
                layers += [normlab_torch.layer_norm(in_dim, True, False, 1e-5), nn.Linear(in_dim, h_dim), nn.ReLU()]
            elif kind == "ln-post":
                layers += [nn.Linear(in_dim, h_dim, bias=False), nn.LayerNorm(h_dim), nn.ReLU()]
            in_dim = h_dim
        layers.append(nn.Linear(in_dim, output_dim, bias=False))
        self.network = nn.Sequential(*layers)


class Net001(nn.Module):
    """seeds/001's Net (children p1, ln1, p2, bn2, p3, ln3, p4)."""

    def __init__(self):
        super().__init__()
        self.p1 = normlab_torch.WeightNormalizedLinear(784, 512)
        self.ln1 = normlab_torch.NotebookLayerNorm()
        self.p2 = normlab_torch.WeightNormalizedLinear(512, 512)
        self.bn2 = normlab_torch.NotebookBatchNorm()
        self.p3 = normlab_torch.WeightNormalizedLinear(512, 256)
        self.ln3 = normlab_torch.NotebookLayerNorm()
        self.p4 = normlab_torch.WeightNormalizedLinear(256, 10)


def seed001_standard():
    wn = nn.utils.weight_norm
    return nn.Sequential(wn(nn.Linear(784, 512)), nn.ReLU(), nn.LayerNorm(512), wn(nn.Linear(512, 512)), nn.ReLU(),
                         nn.BatchNorm1d(512), wn(nn.Linear(512, 256)), nn.ReLU(), nn.LayerNorm(256),
                         wn(nn.Linear(256, 10)))


def notebook_twin(spec):
    name, _, rest = spec.partition(":")
    if name == "seed001":
        return seed001_standard()
    if name == "seed001-notebook":
        return Net001()
    if name in normlab_torch.SEED000_BLOCKS:
        p = {k: v[0] for k, v in normlab_torch.SEED000_PARAMS.items()}
        for item in filter(None, rest.split(",")):
            k, v = item.split("=")
            p[k] = int(v)
        return MLP000(name, 784, p["depth"] * [p["width"]], p["out"])
    return None


# ----------------------------------------------------------------- comparison


def normlab_keys(binary, spec, shape):
    out = subprocess.run([binary, "model", spec, "--input", shape, "--keys"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"normlab model '{spec}' failed: {out.stderr.strip()}")
    return out.stdout.strip().splitlines()


def normlab_spec_text(binary, spec):
    out = subprocess.run([binary, "model", spec], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].removeprefix("spec:").strip()


def diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"entry {i}: {x!r} != {y!r}"
    return f"lengths {len(a)} != {len(b)}" if len(a) != len(b) else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--normlab", default=os.path.join(ROOT, "build", "normlab"))
    binary = ap.parse_args().normlab
    failures, checks = 0, 0
    for spec, shape in SPECS:
        ours = normlab_keys(binary, spec, shape)
        twin = normlab_torch.state_lines(normlab_torch.build_module(spec, [int(d) for d in shape.split("x")]))
        comparisons = [("normlab_torch", twin)]
        nb = notebook_twin(spec)
        if nb is not None:
            comparisons.append(("notebook module", normlab_torch.state_lines(nb)))
        if normlab_torch.is_preset(spec):
            comparisons.append(("preset text", None))
        for what, theirs in comparisons:
            checks += 1
            if theirs is None:
                problem = None if normlab_spec_text(binary, spec) == normlab_torch.preset_spec(spec) else "spec texts differ"
            else:
                problem = diff(ours, theirs)
            print(f"{'ok  ' if problem is None else 'FAIL'} {spec[:60]:<60} vs {what}" + (f": {problem}" if problem else ""))
            failures += problem is not None
    print(f"\n{checks - failures}/{checks} comparisons agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
