"""PyTorch twins of normlab models.

build_module(spec_or_preset, input_shape) returns the torch.nn.Module that a
normlab model spec describes, with the same state_dict keys, shapes and order
as normlab's, so that a normlab checkpoint loads with
`module.load_state_dict(...)`. The spec language is docs/model-spec.md; this
file follows src/nn/model_spec.cpp and src/nn/model_presets.cpp (the test
tests/torch/check_spec_keys.py keeps the two in step).

    import normlab_torch
    net = normlab_torch.build_module("seed001", (784,))
    net = normlab_torch.build_module("bn-pre:depth=3,width=512,out=100", (28, 28))

As a script: `python3 normlab_torch.py SPEC [--input 28x28] [--keys]` prints the
module, or with --keys one "key<TAB>shape" line per state_dict entry, the same
format as `normlab model SPEC --keys`.
"""

import argparse
import math
import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_FEATURES = 1 << 20


class SpecError(ValueError):
    pass


# --------------------------------------------------------------------------- the seed-001 notebook's layers
# Copied from the notebook (seeds/001), so its checkpoints carry the same keys.


class WeightNormalizedLinear(nn.Module):
    """w = g * v / ||v||_dim0 with a full (out, in) g; state g, weight (= v), bias."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.g = nn.Parameter(torch.empty((out_features, in_features)))
        self.weight = nn.Parameter(torch.empty((out_features, in_features)))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        nn.init.kaiming_uniform_(self.g, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.g * self.weight / torch.norm(self.weight, dim=0), self.bias)


class NotebookBatchNorm(nn.Module):
    """The notebook's "BatchNorm": one mean and variance over the whole tensor, scalar affine."""

    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.empty(1))
        self.gamma = nn.Parameter(torch.empty(1))
        nn.init.uniform_(self.beta)
        nn.init.uniform_(self.gamma)

    def forward(self, x):
        mean = torch.mean(x)
        diff = x - mean
        return self.gamma * diff / torch.sqrt(torch.mean(diff * diff) + 1e-6) + self.beta


class NotebookLayerNorm(nn.Module):
    """The notebook's "LayerNorm": per row, scalar affine."""

    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.empty(1))
        self.gamma = nn.Parameter(torch.empty(1))
        nn.init.uniform_(self.beta)
        nn.init.uniform_(self.gamma)

    def forward(self, x):
        diff = x - torch.mean(x, dim=1).reshape(-1, 1)
        var = torch.mean(diff * diff, dim=1).reshape(-1, 1)
        return self.gamma * diff / torch.sqrt(var + 1e-6) + self.beta


def layer_norm(d, elementwise_affine, bias, eps):
    # LayerNorm(bias=False) arrived in PyTorch 2.1; on older versions drop the
    # bias parameter by hand (F.layer_norm accepts bias=None).
    try:
        return nn.LayerNorm(d, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
    except TypeError:
        ln = nn.LayerNorm(d, eps=eps, elementwise_affine=elementwise_affine)
        if elementwise_affine and not bias:
            ln.register_parameter("bias", None)
        return ln


class RMSNormTwin(nn.Module):
    """torch.nn.RMSNorm for PyTorch < 2.4 (Debian's 1.13): the same state (weight) and
    math, y = x / sqrt(mean(x^2) + eps) * weight over the trailing normalized_shape,
    eps=None meaning finfo(x.dtype).eps (float32's for float16/bfloat16)."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True):
        super().__init__()
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))
        else:
            self.register_parameter("weight", None)

    def forward(self, x):
        dims = tuple(range(-len(self.normalized_shape), 0))
        xu = x if x.dtype == torch.float64 else x.float()
        eps = self.eps if self.eps is not None else torch.finfo(xu.dtype).eps
        y = (xu * torch.rsqrt(xu.pow(2).mean(dims, keepdim=True) + eps)).type_as(x)
        return y * self.weight if self.weight is not None else y


def rms_norm(shape, elementwise_affine, eps):
    if hasattr(nn, "RMSNorm"):  # PyTorch >= 2.4
        return nn.RMSNorm(shape, eps=eps, elementwise_affine=elementwise_affine)
    return RMSNormTwin(shape, eps=eps, elementwise_affine=elementwise_affine)


def normalized_shape(item, opt, shape):
    """layernorm/rmsnorm: the trailing dims they normalize over, as model_spec.cpp plans them:
    the last dim (or the size D), the last dims=K dims, or shape=AxB..., never the batch dim."""
    sizes = item["sizes"]
    if ("dims" in opt or "shape" in opt) and sizes:
        raise SpecError(f"{item['layer']}: give the size D (the last dim) or dims= / shape=, not both")
    if "dims" in opt and "shape" in opt:
        raise SpecError(f"{item['layer']}: give dims= or shape=, not both")
    if "shape" in opt:
        ns = [int(d) for d in opt["shape"].lower().split("x")]
        if len(ns) > len(shape) - 1 or shape[len(shape) - len(ns):] != ns:
            raise SpecError(f"{item['layer']} normalizes over trailing dims {ns}, got shape {shape}")
        return ns
    k = int(opt.get("dims", "1"))
    if not 1 <= k <= len(shape) - 1:
        raise SpecError(f"{item['layer']} normalizes over the last {k} dims, got shape {shape}")
    if sizes and sizes[0] != shape[-1]:
        raise SpecError(f"{item['layer']}({sizes[0]}) normalizes over {sizes[0]} features, got shape {shape}")
    return shape[len(shape) - k:]


# --------------------------------------------------------------------------- BatchNorm variants
# Independent PyTorch twins of normlab's MeanOnlyBatchNorm1d, BatchRenorm1d and
# GhostBatchNorm1d (include/normlab/bn_family.hpp): written from the papers and
# from nn.BatchNorm1d's documented running-statistics update, not from normlab's
# code. They generate normlab's fixtures (tests/fixtures/generate_layers.py).
# Inputs (N, C), (N, C, L) or (N, C, H, W), statistics per channel over N*L (N*H*W) values.


# (N, C, H, W) too (issue 11): per channel over N*H*W, as BatchNorm2d.


def _channel_dims(x):
    return (0,) + tuple(range(2, x.dim()))


def _per_channel(t, x):
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def _check_bn_input(name, x, C):
    if x.dim() not in (2, 3, 4) or x.shape[1] != C:
        raise ValueError(f"{name}: expected input (N, {C}), (N, {C}, L) or (N, {C}, H, W), got {tuple(x.shape)}")


def _momentum_factor(momentum, num_batches_tracked):
    """nn.BatchNorm1d's exponential_average_factor, after num_batches_tracked was incremented."""
    return 1.0 / float(num_batches_tracked) if momentum is None else momentum


class MeanOnlyBatchNorm1d(nn.Module):
    """Mean-only batch normalization (Salimans & Kingma 2016, section 2.2):
    y = x - mean_B + bias in training, x - running_mean + bias in eval; no weight
    (weight normalization supplies the scale), no variance. State: bias,
    running_mean, num_batches_tracked."""

    def __init__(self, num_features, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.momentum = num_features, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        _check_bn_input("MeanOnlyBatchNorm1d", x, self.num_features)
        if self.training or not self.track_running_stats:
            if x.numel() == 0:
                mean = torch.zeros(self.num_features, dtype=x.dtype)
            else:
                mean = x.mean(dim=_channel_dims(x))
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
                if x.numel() != 0:
                    f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
                    with torch.no_grad():
                        self.running_mean.copy_((1 - f) * self.running_mean + f * mean)
        else:
            mean = self.running_mean
        y = x - _per_channel(mean, x)
        return y + _per_channel(self.bias, x) if self.bias is not None else y


class BatchRenorm1d(nn.Module):
    """Batch Renormalization (Ioffe 2017, Algorithm 1) with BatchNorm1d's state:
    sigma = sqrt(running_var + eps), sigma_B = sqrt(var_B + eps),
    r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B - running_mean) / sigma, -dmax, dmax),
    both detached (stop_gradient); y = weight * ((x - mean_B) / sigma_B * r + d) + bias.
    running_mean / running_var then move as nn.BatchNorm1d's (unbiased variance).
    rmax and dmax follow the schedule: 1 and 0 for `warmup` steps, then linear to
    rmax over rmax_ramp steps and to dmax over dmax_ramp steps (the step is
    num_batches_tracked before the update). Eval: BatchNorm1d's."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, rmax=3.0, dmax=5.0,
                 warmup=0, rmax_ramp=0, dmax_ramp=0):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.rmax, self.dmax = rmax, dmax
        self.warmup, self.rmax_ramp, self.dmax_ramp = warmup, rmax_ramp, dmax_ramp
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _fraction(self, step, ramp):
        if step < self.warmup:
            return 0.0
        return 1.0 if ramp == 0 else min(1.0, (step - self.warmup) / ramp)

    def limits(self, step):
        """(rmax, dmax) of the training step after `step` completed ones."""
        return (1 + (self.rmax - 1) * self._fraction(step, self.rmax_ramp),
                self.dmax * self._fraction(step, self.dmax_ramp))

    def forward(self, x):
        _check_bn_input("BatchRenorm1d", x, self.num_features)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        if x.numel() // self.num_features == 1:
            raise ValueError("BatchRenorm1d: expected more than 1 value per channel when training")
        step = int(self.num_batches_tracked.item())
        self.num_batches_tracked += 1
        if x.numel() == 0:
            return x.clone()
        dims = _channel_dims(x)
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        sigma_b = torch.sqrt(var + self.eps)
        rmax, dmax = self.limits(step)
        with torch.no_grad():
            sigma = torch.sqrt(self.running_var + self.eps)
            r = (sigma_b / sigma).clamp(1 / rmax, rmax) if rmax != 1 else torch.ones_like(sigma)
            d = ((mean - self.running_mean) / sigma).clamp(-dmax, dmax) if dmax != 0 \
                else torch.zeros_like(sigma)
        self.last_r, self.last_d = r, d
        xhat = (x - _per_channel(mean, x)) / _per_channel(sigma_b, x) * _per_channel(r, x) \
            + _per_channel(d, x)
        y = xhat * _per_channel(self.weight, x) + _per_channel(self.bias, x) if self.affine else xhat
        n = x.numel() // self.num_features
        f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
        with torch.no_grad():
            self.running_mean.copy_((1 - f) * self.running_mean + f * mean)
            self.running_var.copy_((1 - f) * self.running_var + f * var * n / (n - 1))
        return y


class GhostBatchNorm1d(nn.Module):
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, section 4, Algorithm 1):
    in training the batch is split into virtual batches of virtual_batch_size
    consecutive samples (x.split: the last holds the remainder), each normalized
    with its own statistics; the running statistics move once per virtual batch,
    in order, and num_batches_tracked counts virtual batches. Eval: BatchNorm1d's
    (without tracking: the virtual-batch normalization). State: BatchNorm1d's."""

    def __init__(self, num_features, virtual_batch_size=32, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.num_features, self.virtual_batch_size = num_features, virtual_batch_size
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _normalize(self, x):
        dims = _channel_dims(x)
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        y = (x - _per_channel(mean, x)) / _per_channel(torch.sqrt(var + self.eps), x)
        if self.affine:
            y = y * _per_channel(self.weight, x) + _per_channel(self.bias, x)
        return y, mean, var

    def forward(self, x):
        _check_bn_input("GhostBatchNorm1d", x, self.num_features)
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        update = self.training and self.track_running_stats
        if x.shape[0] == 0:
            if update:
                self.num_batches_tracked += 1
            return x.clone()
        out = []
        for chunk in x.split(self.virtual_batch_size):
            if chunk.numel() // self.num_features == 1:
                raise ValueError("GhostBatchNorm1d: expected more than 1 value per channel in every virtual batch")
            y, mean, var = self._normalize(chunk)
            out.append(y)
            if update:
                self.num_batches_tracked += 1
                n = chunk.numel() // self.num_features
                f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
                with torch.no_grad():
                    self.running_mean.copy_((1 - f) * self.running_mean + f * mean)
                    self.running_var.copy_((1 - f) * self.running_var + f * var * n / (n - 1))
        return torch.cat(out)


# --------------------------------------------------------------------------- presets

SEED000_BLOCKS = {
    "none": "linear(W, bias=false), relu",
    "bn-pre": "batchnorm(affine=false), linear(W), relu",
    "bn-post": "linear(W, bias=false), batchnorm, relu",
    "ln-pre": "layernorm(bias=false), linear(W), relu",
    "ln-post": "linear(W, bias=false), layernorm, relu",
}
SEED000_PARAMS = {"depth": (3, 0, 1000), "width": (512, 1, MAX_FEATURES), "out": (10, 1, MAX_FEATURES)}
FIXED_PRESETS = {
    "seed001": "wnlinear(784, 512), relu, layernorm(512), wnlinear(512, 512), relu, batchnorm(512), "
    "wnlinear(512, 256), relu, layernorm(256), wnlinear(256, 10)",
    "seed001-notebook": "p1: nb_wnlinear(784, 512), relu, ln1: nb_layernorm, p2: nb_wnlinear(512, 512), "
    "relu, bn2: nb_batchnorm, p3: nb_wnlinear(512, 256), relu, ln3: nb_layernorm, "
    "p4: nb_wnlinear(256, 10)",
}


# cnn:norm=none|bn|gn|in|ln (src/nn/model_presets.cpp): the norm after each conv and after linear(128).
CNN_NORMS = {"none": ("", ""), "bn": ("batchnorm2d(C)", "batchnorm(128)"),
             "gn": ("groupnorm(8)", "groupnorm(8)"), "in": ("instancenorm2d(C)", "layernorm(128)"),
             "ln": ("layernorm(dims=3)", "layernorm(128)")}


def cnn_spec(norm):
    n2, n1 = CNN_NORMS[norm]
    def block(c):
        n = n2.replace("C", str(c))
        return f"conv2d({c}, 3), " + (f"{n}, " if n else "") + "relu, maxpool2d(2), "
    return ("unflatten(1, 28, 28), " + block(32) + block(64) + "flatten, linear(128), " +
            (f"{n1}, " if n1 else "") + "relu, linear(10)")


def preset_names():
    return list(FIXED_PRESETS) + list(SEED000_BLOCKS) + ["cnn"]


def is_preset(text):
    return text.split(":", 1)[0].strip() in preset_names()


def preset_spec(text):
    name, _, rest = text.partition(":")
    name = name.strip()
    if name in FIXED_PRESETS:
        if rest.strip():
            raise SpecError(f"preset {name} takes no parameters, got '{rest.strip()}'")
        return FIXED_PRESETS[name]
    if name == "cnn":
        norm = "none"
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, value = (v.strip() for v in item.partition("="))
            if key != "norm" or value not in CNN_NORMS:
                raise SpecError(f"preset cnn: norm must be one of {'|'.join(CNN_NORMS)}, got '{item}'")
            norm = value
        return cnn_spec(norm)
    if name not in SEED000_BLOCKS:
        raise SpecError(f"unknown preset '{name}'; known presets: {', '.join(preset_names())}")
    values = {k: v[0] for k, v in SEED000_PARAMS.items()}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or key not in SEED000_PARAMS:
                raise SpecError(f"preset {name}: expected key=value with a key among depth, width, out, got '{item.strip()}'")
            _, lo, hi = SEED000_PARAMS[key]
            if not value.isdigit() or not lo <= int(value) <= hi:
                raise SpecError(f"preset {name}: {key} must be a whole number in {lo}..{hi}, got '{value}'")
            values[key] = int(value)
    block = SEED000_BLOCKS[name].replace("W", str(values["width"]))
    return "network: [flatten" + f", {block}" * values["depth"] + f", linear({values['out']}, bias=false)]"


def resolve_spec(text):
    return preset_spec(text) if is_preset(text) else text


# --------------------------------------------------------------------------- parser

TOKEN = re.compile(r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[-+.0-9](?:[eE][-+]|[A-Za-z0-9_.])*)|(?P<punct>[()\[\],:=]))")
LAYERS = {
    # name: (kind, min sizes, max sizes, options)
    "flatten": ("flatten", 0, 0, ()),
    "linear": ("linear", 1, 2, ("bias",)),
    "wnlinear": ("wnlinear", 1, 2, ("bias", "dim")),
    "batchnorm": ("batchnorm", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    "bn": ("batchnorm", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    "layernorm": ("layernorm", 0, 1, ("elementwise_affine", "bias", "eps", "dims", "shape")),
    "ln": ("layernorm", 0, 1, ("elementwise_affine", "bias", "eps", "dims", "shape")),
    "relu": ("relu", 0, 0, ()),
    "nb_wnlinear": ("nb_wnlinear", 1, 2, ("bias",)),
    "nb_batchnorm": ("nb_batchnorm", 0, 0, ()),
    "nb_layernorm": ("nb_layernorm", 0, 0, ()),
    "rmsnorm": ("rmsnorm", 0, 1, ("elementwise_affine", "eps", "dims", "shape")),
    "groupnorm": ("groupnorm", 1, 2, ("eps", "affine")),
    "gn": ("groupnorm", 1, 2, ("eps", "affine")),
    "instancenorm1d": ("instancenorm1d", 0, 1, ("eps", "momentum", "affine", "track_running_stats")),
    "in": ("instancenorm1d", 0, 1, ("eps", "momentum", "affine", "track_running_stats")),
    "unflatten": ("unflatten", 1, 8, ()),
    # BatchNorm variants
    "mean_only_batchnorm": ("mean_only_batchnorm", 0, 1, ("affine", "momentum", "track_running_stats")),
    "meanonlybn": ("mean_only_batchnorm", 0, 1, ("affine", "momentum", "track_running_stats")),
    "batchrenorm": ("batchrenorm", 0, 1, ("affine", "momentum", "eps", "rmax", "dmax", "schedule", "warmup",
                                          "rmax_ramp", "dmax_ramp")),
    "brn": ("batchrenorm", 0, 1, ("affine", "momentum", "eps", "rmax", "dmax", "schedule", "warmup",
                                  "rmax_ramp", "dmax_ramp")),
    "ghostbatchnorm": ("ghostbatchnorm", 0, 1, ("virtual_batch_size", "affine", "momentum", "eps",
                                                "track_running_stats")),
    "gbn": ("ghostbatchnorm", 0, 1, ("virtual_batch_size", "affine", "momentum", "eps", "track_running_stats")),
    "syncbatchnorm": ("syncbatchnorm", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    "syncbn": ("syncbatchnorm", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    # the norms on (N, C, H, W) (issue 11)
    "batchnorm2d": ("batchnorm2d", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    "bn2d": ("batchnorm2d", 0, 1, ("affine", "momentum", "eps", "track_running_stats")),
    "instancenorm2d": ("instancenorm2d", 0, 1, ("eps", "momentum", "affine", "track_running_stats")),
    "in2d": ("instancenorm2d", 0, 1, ("eps", "momentum", "affine", "track_running_stats")),
    # issue 11: convolution and pooling
    "conv2d": ("conv2d", 2, 2, ("stride", "padding", "dilation", "groups", "bias")),
    "maxpool2d": ("maxpool2d", 1, 1, ("stride", "padding", "dilation")),
    "avgpool2d": ("avgpool2d", 1, 1, ("stride", "padding", "count_include_pad")),
    "adaptiveavgpool2d": ("adaptiveavgpool2d", 1, 1, ()),
    "sigmoid": ("sigmoid", 0, 0, ()),
}


def tokenize(spec):
    tokens, pos = [], 0
    while pos < len(spec):
        if spec[pos:].strip() == "":
            break
        m = TOKEN.match(spec, pos)
        if not m:
            raise SpecError(f"model spec, column {pos + 1}: unexpected character '{spec[pos:].lstrip()[0]}'")
        kind = m.lastgroup
        tokens.append((kind if kind != "punct" else m.group(kind), m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(spec)))
    return tokens


class Parser:
    def __init__(self, spec):
        self.spec, self.toks, self.i = spec, tokenize(spec), 0

    def peek(self, k=0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def error(self, what):
        t = self.peek()
        raise SpecError(f"model spec, column {t[2] + 1}: expected {what}, found '{t[1] or 'the end'}'")

    def parse(self):
        items = self.items("end")
        return items

    def items(self, closing):
        out = []
        if self.peek()[0] == closing:
            self.error("a layer")
        while True:
            out.append(self.item())
            if self.peek()[0] == ",":
                self.take()
                if self.peek()[0] == closing:
                    self.error("a layer after ','")
                continue
            if self.peek()[0] == closing:
                return out
            self.error("',' or " + ("']'" if closing == "]" else "the end of the spec"))

    def item(self):
        name = None
        if self.peek()[0] in ("ident", "number") and self.peek(1)[0] == ":":
            name = self.take()[1]
            self.take()
        if self.peek()[0] == "[":
            self.take()
            children = self.items("]")
            self.take()
            return {"name": name, "group": children}
        tok = self.take()
        if tok[0] != "ident" or tok[1].lower() not in LAYERS:
            raise SpecError(f"model spec, column {tok[2] + 1}: unknown layer '{tok[1]}'")
        layer = {"name": name, "layer": tok[1].lower(), "sizes": [], "options": {}}
        if self.peek()[0] == "(":
            self.take()
            while self.peek()[0] != ")":
                if self.peek()[0] == "ident" and self.peek(1)[0] == "=":
                    key = self.take()[1].lower()
                    self.take()
                    layer["options"][key] = self.take()[1]
                else:
                    layer["sizes"].append(_size_or_pair(self.take()[1]))
                if self.peek()[0] == ",":
                    self.take()
            self.take()
        return layer


def _size_or_pair(text):
    """A positional size: 3, or 3x5 (conv2d's and the pools' kernel HxW) as a tuple."""
    if "x" in text.lower():
        return tuple(int(v) for v in text.lower().split("x"))
    return int(text)


def _pair(v, lo=1):
    """conv2d's / the pools' stride, padding, dilation: '2' -> (2, 2), '2x1' -> (2, 1)."""
    p = _size_or_pair(v) if isinstance(v, str) else v
    p = (p, p) if isinstance(p, int) else tuple(p)
    if len(p) != 2 or any(x < lo for x in p):
        raise SpecError(f"expected a whole number >= {lo} or HxW, got '{v}'")
    return p


def boolean(v):
    if v.lower() not in ("true", "false"):
        raise SpecError(f"expected true or false, got '{v}'")
    return v.lower() == "true"


# --------------------------------------------------------------------------- building


def build_module(spec_or_preset, input_shape):
    """The torch module for a spec or preset; input_shape excludes the batch dimension."""
    spec = resolve_spec(spec_or_preset)
    shape = [2] + list(input_shape)
    module, _ = build_sequence(Parser(spec).parse(), shape)
    return module


def build_sequence(items, shape):
    children = OrderedDict()
    for i, item in enumerate(items):
        name = item["name"] if item["name"] is not None else str(i)
        if name in children:
            raise SpecError(f"child name '{name}' is used twice")
        if "group" in item:
            children[name], shape = build_sequence(item["group"], shape)
        else:
            children[name], shape = build_layer(item, shape)
    return nn.Sequential(children), shape


def weight_norm_dim(text):
    """wnlinear's dim= as normlab reads it (src/nn/model_spec.cpp), passed to weight_norm as
    given: 0 and -2 per output row, 1 per input column, none and -1 the whole matrix
    (weight_norm itself reads -1 as the whole tensor, as it does None)."""
    v = text.lower()
    if v == "none":
        return None
    if v in ("0", "1", "-1", "-2"):
        return int(v)
    raise SpecError(f"dim must be 0 or -2 (one norm per output row), 1 (one per input column), "
                    f"or none or -1 (one norm for the whole matrix), got '{text}'")


def build_layer(item, shape):
    kind, lo, hi, keys = LAYERS[item["layer"]]
    sizes, opt = item["sizes"], item["options"]
    for k in opt:
        if k not in keys:
            raise SpecError(f"unknown option '{k}' for {item['layer']}")
    flat = [v for s in sizes for v in (s if isinstance(s, tuple) else (s,))]
    if not lo <= len(sizes) <= hi or any(not 0 < s <= MAX_FEATURES for s in flat):
        raise SpecError(f"bad sizes {sizes} for {item['layer']}")
    bias = boolean(opt.get("bias", "true"))
    eps = float(opt.get("eps", "1e-5")) if kind != "rmsnorm" else (
        None if opt.get("eps", "none").lower() == "none" else float(opt["eps"]))
    last = shape[-1]
    if kind == "flatten":
        return nn.Flatten(), [shape[0], math.prod(shape[1:])]
    if kind in ("linear", "wnlinear", "nb_wnlinear"):
        if len(sizes) == 2 and sizes[0] != last:
            raise SpecError(f"{item['layer']}{tuple(sizes)} expects {sizes[0]} input features, got shape {shape}")
        out = sizes[-1]
        if kind == "linear":
            layer = nn.Linear(last, out, bias=bias)
        elif kind == "wnlinear":
            layer = nn.utils.weight_norm(nn.Linear(last, out, bias=bias), dim=weight_norm_dim(opt.get("dim", "0")))
        else:
            layer = WeightNormalizedLinear(last, out, bias=bias)
        return layer, shape[:-1] + [out]
    if kind == "batchnorm":
        if sizes and sizes[0] != shape[1]:
            raise SpecError(f"batchnorm({sizes[0]}) expects {sizes[0]} channels, got shape {shape}")
        momentum = opt.get("momentum", "0.1")
        return nn.BatchNorm1d(shape[1], eps=eps, momentum=None if momentum.lower() == "none" else float(momentum),
                              affine=boolean(opt.get("affine", "true")),
                              track_running_stats=boolean(opt.get("track_running_stats", "true"))), shape
    if kind == "layernorm":
        ns = normalized_shape(item, opt, shape)
        return layer_norm(ns if len(ns) > 1 else ns[0], boolean(opt.get("elementwise_affine", "true")),
                          bias, eps), shape
    if kind == "relu":
        return nn.ReLU(), shape
    if kind == "nb_batchnorm":
        return NotebookBatchNorm(), shape
    if kind == "nb_layernorm":
        return NotebookLayerNorm(), shape
    if kind == "rmsnorm":
        ns = normalized_shape(item, opt, shape)
        return rms_norm(ns, boolean(opt.get("elementwise_affine", "true")), eps), shape
    if kind == "groupnorm":
        if len(shape) < 2:
            raise SpecError(f"groupnorm needs an input (N, C, *), got shape {shape}")
        if len(sizes) == 2 and sizes[1] != shape[1]:
            raise SpecError(f"groupnorm{tuple(sizes)} expects {sizes[1]} channels, got shape {shape}")
        if shape[1] % sizes[0]:
            raise SpecError(f"groupnorm({sizes[0]}): {shape[1]} channels are not divisible by {sizes[0]} groups")
        return nn.GroupNorm(sizes[0], shape[1], eps=eps, affine=boolean(opt.get("affine", "true"))), shape
    if kind == "instancenorm1d":
        if len(shape) != 3 or shape[2] < 2:
            raise SpecError(f"instancenorm1d needs a 3-D (N, C, L) input with L > 1, got shape {shape}")
        if sizes and sizes[0] != shape[1]:
            raise SpecError(f"instancenorm1d({sizes[0]}) expects {sizes[0]} channels, got shape {shape}")
        momentum = opt.get("momentum", "0.1")
        return nn.InstanceNorm1d(shape[1], eps=eps, momentum=None if momentum.lower() == "none" else float(momentum),
                                 affine=boolean(opt.get("affine", "false")),
                                 track_running_stats=boolean(opt.get("track_running_stats", "false"))), shape
    if kind == "unflatten":
        if len(shape) < 2 or math.prod(sizes) != shape[1]:
            raise SpecError(f"unflatten{tuple(sizes)} cannot split dim 1 of shape {shape}")
        return nn.Unflatten(1, tuple(sizes)), [shape[0]] + list(sizes) + shape[2:]
    if kind in ("mean_only_batchnorm", "batchrenorm", "ghostbatchnorm"):
        if sizes and sizes[0] != shape[1]:
            raise SpecError(f"{item['layer']}({sizes[0]}) expects {sizes[0]} channels, got shape {shape}")
        momentum = opt.get("momentum", "0.1")
        momentum = None if momentum.lower() == "none" else float(momentum)
        affine = boolean(opt.get("affine", "true"))
        track = boolean(opt.get("track_running_stats", "true"))
        if kind == "mean_only_batchnorm":
            return MeanOnlyBatchNorm1d(shape[1], momentum=momentum, affine=affine, track_running_stats=track), shape
        if kind == "ghostbatchnorm":
            return GhostBatchNorm1d(shape[1], int(opt.get("virtual_batch_size", "32")), eps=eps, momentum=momentum,
                                    affine=affine, track_running_stats=track), shape
        paper = opt.get("schedule", "none").lower() == "paper"
        steps = {k: int(opt.get(k, default if paper else 0))
                 for k, default in (("warmup", 5000), ("rmax_ramp", 35000), ("dmax_ramp", 20000))}
        return BatchRenorm1d(shape[1], eps=eps, momentum=momentum, affine=affine, rmax=float(opt.get("rmax", "3")),
                             dmax=float(opt.get("dmax", "5")), **steps), shape
    if kind == "syncbatchnorm":
        # torch.nn.SyncBatchNorm: BatchNorm's keys; in one process (no process
        # group) it computes what BatchNorm does, across ranks normlab's
        # SyncBatchNorm matches it (include/normlab/syncbn.hpp).
        if len(shape) not in (2, 3, 4):
            raise SpecError(f"syncbatchnorm needs a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) input, "
                            f"got shape {shape}")
        if sizes and sizes[0] != shape[1]:
            raise SpecError(f"syncbatchnorm({sizes[0]}) expects {sizes[0]} channels, got shape {shape}")
        momentum = opt.get("momentum", "0.1")
        return nn.SyncBatchNorm(shape[1], eps=eps, momentum=None if momentum.lower() == "none" else float(momentum),
                                affine=boolean(opt.get("affine", "true")),
                                track_running_stats=boolean(opt.get("track_running_stats", "true"))), shape
    if kind in ("batchnorm2d", "instancenorm2d"):
        if len(shape) != 4:
            raise SpecError(f"{kind} needs a 4-D (N, C, H, W) input, got shape {shape}")
        if sizes and sizes[0] != shape[1]:
            raise SpecError(f"{kind}({sizes[0]}) expects {sizes[0]} channels, got shape {shape}")
        momentum = opt.get("momentum", "0.1")
        momentum = None if momentum.lower() == "none" else float(momentum)
        if kind == "batchnorm2d":
            return nn.BatchNorm2d(shape[1], eps=eps, momentum=momentum, affine=boolean(opt.get("affine", "true")),
                                  track_running_stats=boolean(opt.get("track_running_stats", "true"))), shape
        if shape[2] * shape[3] < 2:
            raise SpecError(f"instancenorm2d needs H*W > 1, got shape {shape}")
        return nn.InstanceNorm2d(shape[1], eps=eps, momentum=momentum, affine=boolean(opt.get("affine", "false")),
                                 track_running_stats=boolean(opt.get("track_running_stats", "false"))), shape
    if kind in ("conv2d", "maxpool2d", "avgpool2d"):
        if len(shape) != 4:
            raise SpecError(f"{kind} needs a 4-D (N, C, H, W) input, got shape {shape}")
        conv = kind == "conv2d"
        k = _pair(sizes[1] if conv else sizes[0])
        stride = _pair(opt["stride"]) if "stride" in opt else ((1, 1) if conv else k)
        padding = _pair(opt.get("padding", "0"), lo=0)
        dilation = _pair(opt.get("dilation", "1"))
        if conv:
            layer = nn.Conv2d(shape[1], sizes[0], k, stride=stride, padding=padding, dilation=dilation,
                              groups=int(opt.get("groups", "1")), bias=bias)
        elif kind == "maxpool2d":
            layer = nn.MaxPool2d(k, stride=stride, padding=padding, dilation=dilation)
        else:
            layer = nn.AvgPool2d(k, stride=stride, padding=padding,
                                 count_include_pad=boolean(opt.get("count_include_pad", "true")))
        out = [(shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
        return layer, [shape[0], sizes[0] if conv else shape[1]] + out
    if kind == "adaptiveavgpool2d":
        if len(shape) != 4:
            raise SpecError(f"adaptiveavgpool2d needs a 4-D (N, C, H, W) input, got shape {shape}")
        o = _pair(sizes[0])
        return nn.AdaptiveAvgPool2d(o), shape[:2] + list(o)
    if kind == "sigmoid":
        return nn.Sigmoid(), shape
    raise SpecError(f"unhandled layer {kind}")


def state_lines(module):
    """'key<TAB>(d1, d2)' per state_dict entry, as `normlab model --keys` prints them."""
    return [f"{k}\t({', '.join(str(d) for d in v.shape)})" for k, v in module.state_dict().items()]


# --------------------------------------------------------------------------- data-dependent init
# The twin of normlab's data_dependent_init (src/nn/weight_norm_init.cpp,
# docs/weight-norm-init.md): Salimans & Kingma 2016, section 3, written
# independently in PyTorch ops.


def _weight_norm_parts(module):
    """(g, v) of a weight-normalized Linear, under either PyTorch API; None otherwise."""
    if isinstance(module, nn.Linear):
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):  # nn.utils.weight_norm
            return module.weight_g, module.weight_v
        p = getattr(module, "parametrizations", None)
        if p is not None and "weight" in p:  # nn.utils.parametrizations.weight_norm
            return p.weight.original0, p.weight.original1
    return None


@torch.no_grad()
def data_dependent_init(module, batch, v_std=0.05, draw_v=True, generator=None):
    """Initialises every weight_norm(nn.Linear) of `module` (nested nn.Sequential too) from
    `batch`, in forward order: v ~ N(0, v_std^2) (unless draw_v is False), then with
    t = x v^T / ||v|| over every row of the layer's input, g = 1/sigma[t] and
    b = -mu[t]/sigma[t] (biased standard deviation, as the paper's code), before the layer
    runs. Runs in the module's mode; buffers (BatchNorm's running statistics) are put back.
    Returns the names of the initialised layers. Only weight_g of shape (out, 1) (dim=0/-2)
    with a bias is accepted, as in normlab."""
    buffers = {k: b.clone() for k, b in module.named_buffers()}
    done = []

    def run(m, prefix, x):
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                x = run(child, f"{prefix}.{name}" if prefix else name, x)
            return x
        parts = _weight_norm_parts(m)
        if parts is not None:
            g, v = parts
            if g.dim() != 2 or g.shape[1] != 1 or g.shape[0] != v.shape[0]:
                raise ValueError(f"{prefix}: needs weight_g of shape (out, 1), got {tuple(g.shape)}")
            if m.bias is None:
                raise ValueError(f"{prefix}: has no bias")
            if draw_v:
                v.copy_(torch.randn(v.shape, generator=generator, dtype=v.dtype) * v_std)
            rows = x.reshape(-1, v.shape[1]).double()
            t = rows @ (v.double() / v.double().norm(dim=1, keepdim=True)).T
            mu = t.mean(dim=0)
            sigma = t.var(dim=0, unbiased=False).sqrt()
            if rows.shape[0] < 2 or not bool((sigma > 0).all()):
                raise ValueError(f"{prefix}: t does not vary over the batch")
            g.copy_((1 / sigma).reshape(-1, 1).to(g.dtype))
            m.bias.copy_((-mu / sigma).to(m.bias.dtype))
            done.append(prefix)
        return m(x)

    run(module, "", batch)
    for k, b in module.named_buffers():
        b.copy_(buffers[k])
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--input", default="784", help="input shape without the batch dimension, e.g. 28x28")
    ap.add_argument("--keys", action="store_true", help="print only state_dict keys and shapes")
    a = ap.parse_args()
    module = build_module(a.spec, [int(d) for d in a.input.split("x")])
    print("\n".join(state_lines(module)) if a.keys else module)


if __name__ == "__main__":
    main()
