"""normlab's kernels inside PyTorch: autograd functions and drop-in modules.

  normlab.torch.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)
  normlab.torch.batch_norm(input, running_mean, running_var, weight=None, bias=None,
                           training=False, momentum=0.1, eps=1e-5)
  normlab.torch.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, ...)
  normlab.torch.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
                            track_running_stats=True, ...)
  normlab.torch.rms_norm(input, normalized_shape, weight=None, eps=None)
  normlab.torch.group_norm(input, num_groups, weight=None, bias=None, eps=1e-5)
  normlab.torch.weight_norm(v, g, dim=0)      (torch._weight_norm; dim=None: over all of v)
  normlab.torch.RMSNorm(normalized_shape, eps=None, elementwise_affine=True, ...)
  normlab.torch.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, ...)
  normlab.torch.InstanceNorm1d(num_features, eps=1e-5, momentum=0.1, affine=False,
                               track_running_stats=False, ...)
  normlab.torch.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
                            track_running_stats=True, ...)     (N, C, H, W)
  normlab.torch.InstanceNorm2d(num_features, eps=1e-5, momentum=0.1, affine=False,
                               track_running_stats=False, ...)  (N, C, H, W) or (C, H, W)
PyTorch lacks these; arguments and state as normlab's spec and checkpoints
(docs/model-spec.md) and the PyTorch twins in python/normlab_torch.py:
  normlab.torch.BatchRenorm1d(num_features, eps=1e-5, momentum=0.1, affine=True, rmax=3.0,
                              dmax=5.0, warmup=0, rmax_ramp=0, dmax_ramp=0)
  normlab.torch.GhostBatchNorm1d(num_features, virtual_batch_size=32, eps=1e-5, momentum=0.1,
                                 affine=True, track_running_stats=True)
  normlab.torch.MeanOnlyBatchNorm1d(num_features, momentum=0.1, affine=True,
                                    track_running_stats=True)

The functions are torch.nn.functional's, differentiable through
torch.autograd.Function (first derivatives; double backward is not supported).
The modules subclass torch.nn's (LayerNorm, BatchNorm1d, BatchNorm2d, RMSNorm
when torch has it (>= 2.4; before, a module with the same arguments and state),
GroupNorm, InstanceNorm1d, InstanceNorm2d) and replace only forward(), so
constructor arguments, parameters, buffers, state_dict keys, repr and
load_state_dict are PyTorch's own. CPU tensors of float32 or float64;
non-contiguous inputs are made contiguous (one copy) first. Wrong dtype, device
or layout: TypeError; wrong shape: ValueError; each names the argument and the
numbers. LayerNorm, BatchNorm*, RMSNorm, GroupNorm and InstanceNorm* make one
extension call per forward and one per backward (python/src/raw_ext.cpp).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import normlab as _nl

__all__ = ["layer_norm", "batch_norm", "LayerNorm", "BatchNorm1d", "rms_norm", "group_norm",
           "weight_norm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "BatchRenorm1d",
           "GhostBatchNorm1d", "MeanOnlyBatchNorm1d", "BatchNorm2d", "InstanceNorm2d"]


def _c(t):
    return None if t is None else t.contiguous()


# ---- The per-call path of LayerNorm, BatchNorm, RMSNorm and GroupNorm ----
# One extension call per forward and one per backward (normlab._normlab.raw_*,
# python/src/raw_ext.cpp): the tensors' addresses and sizes as integers, the
# outputs allocated by torch and written in place by the kernels. What the
# addresses need (dtype, CPU, dense, C-contiguous, shapes) is checked here,
# once per call, with attribute reads only; a failed check raises TypeError
# (dtype, device, layout) or ValueError (shape) naming the argument and numbers.

_F32, _F64 = torch.float32, torch.float64
_STRIDED = torch.strided
_FINFO_EPS = {_F32: torch.finfo(_F32).eps, _F64: torch.finfo(_F64).eps}
_raw = _nl._normlab


def _dtype_name(dt):
    return str(dt).replace("torch.", "")


def _input(fn, x):
    """x as the kernels read it (float32/float64, dense, CPU, C-contiguous: one copy if not)."""
    dt = x.dtype
    if dt is not _F32 and dt is not _F64:
        raise TypeError(f"{fn}: input has dtype {_dtype_name(dt)}; normlab computes in float32 "
                        "or float64")
    if not x.is_cpu:
        raise TypeError(f"{fn}: input is on {x.device}; normlab's kernels run on the CPU")
    if x.layout is not _STRIDED:
        raise TypeError(f"{fn}: input has layout {x.layout}; normlab needs dense (strided) tensors")
    return x if x.is_contiguous() else x.contiguous()


def _param(fn, name, t, dt, shape, write=False):
    """A weight/bias/running statistic of input's dtype and the given shape, on the
    CPU; made contiguous (a copy) unless written in place (write=True: then an error)."""
    if t is None:
        return None
    if t.dtype is not dt:
        raise TypeError(f"{fn}: {name} has dtype {_dtype_name(t.dtype)}, expected "
                        f"{_dtype_name(dt)} (the dtype of input)")
    if t.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                         "(from the input's shape)")
    if not t.is_cpu or t.layout is not _STRIDED:
        raise TypeError(f"{fn}: {name} is on {t.device} ({t.layout}); normlab's kernels run on "
                        "dense CPU tensors")
    if t.is_contiguous():
        return t
    if write:
        raise ValueError(f"{fn}: {name} of shape {tuple(t.shape)} is not contiguous (strides "
                         f"{t.stride()}); it is updated in place, so it must be")
    return t.contiguous()


def _rows(fn, x, normalized_shape):
    """(N, D) of x normalized over its trailing normalized_shape (LayerNorm's and
    RMSNorm's view: N rows of D values); ValueError if x does not end in it."""
    shape, k = x.shape, len(normalized_shape)
    if k == 1 and shape:  # the common case, without slicing x.shape (~1.5 us less per call)
        D = normalized_shape[0]
        if shape[-1] == D and D > 0:
            return x.numel() // D, D
    if not k or shape[len(shape) - k:] != normalized_shape:
        raise ValueError(f"{fn}: input of shape {tuple(shape)} does not end in "
                         f"normalized_shape {tuple(normalized_shape)}" +
                         ("" if k else " (normalized_shape must not be empty)"))
    D = x.numel() if k == len(shape) else math.prod(normalized_shape)
    if D == 0:
        raise ValueError(f"{fn}: normalized_shape {tuple(normalized_shape)} must have "
                         "positive dims")
    return x.numel() // D, D


def _zeros_or_none(want, t):
    return torch.zeros_like(t) if want and t is not None else None


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, normalized_shape, eps):
        fn = "layer_norm"
        x = _input(fn, input)
        dt = x.dtype
        N, D = _rows(fn, x, normalized_shape)
        w = _param(fn, "weight", weight, dt, normalized_shape)
        b = _param(fn, "bias", bias, dt, normalized_shape)
        out = torch.empty_like(x)
        stats = x.new_empty(2 * N)  # mean, then rstd
        s = stats.data_ptr()
        _raw.raw_layer_norm(dt is _F64, out.data_ptr(), s, s + N * stats.element_size(),
                            x.data_ptr(), 0 if w is None else w.data_ptr(),
                            0 if b is None else b.data_ptr(), N, D, eps)
        ctx.save_for_backward(x, w, stats)
        ctx.sizes = (N, D, normalized_shape, b is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, stats = ctx.saved_tensors
        N, D, ns, has_bias = ctx.sizes
        need = ctx.needs_input_grad
        dy = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dw = _zeros_or_none(need[1], w)
        # zeros_like(w) (bias has weight's shape and dtype) is ~1.5 us cheaper than new_zeros
        db = (x.new_zeros(ns) if w is None else torch.zeros_like(w)) \
            if need[2] and has_bias else None
        s = stats.data_ptr()
        _raw.raw_layer_norm_backward(
            x.dtype is _F64, 0 if dx is None else dx.data_ptr(), 0 if dw is None else dw.data_ptr(),
            0 if db is None else db.data_ptr(), dy.data_ptr(), x.data_ptr(), s,
            s + N * stats.element_size(), 0 if w is None else w.data_ptr(), N, D)
        return dx, dw, db, None, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm on normlab's kernels."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return _LayerNormFunction.apply(input, weight, bias, tuple(normalized_shape), eps)


def _bn_sizes(fn, x):
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"{fn}: input must be (N, C) or (N, C, *), got shape {tuple(shape)}")
    return shape[0], shape[1], (1 if len(shape) == 2 else math.prod(shape[2:]))


class _BatchNormFunction(torch.autograd.Function):
    # running = (running_mean, running_var) or None, passed as one non-tensor
    # argument: the forward updates them in place, outside autograd, as PyTorch
    # does. The backward reads stats (2, C): the mean and 1/sqrt(var + eps) used.
    @staticmethod
    def forward(ctx, input, weight, bias, running, training, momentum, eps):
        fn = "batch_norm"
        x = _input(fn, input)
        dt = x.dtype
        N, C, L = _bn_sizes(fn, x)
        cs = (C,)
        w = _param(fn, "weight", weight, dt, cs)
        b = _param(fn, "bias", bias, dt, cs)
        if running is None:
            rm = rv = None
        else:
            rm = _param(fn, "running_mean", running[0], dt, cs, True)
            rv = _param(fn, "running_var", running[1], dt, cs, True)
            if (rm is None) != (rv is None):
                raise ValueError(f"{fn}: running_mean and running_var must both be given or "
                                 "both be None")
        out = torch.empty_like(x)
        stats = x.new_empty(2 * C)
        args = (dt is _F64, out.data_ptr(), stats.data_ptr(), x.data_ptr(),
                0 if w is None else w.data_ptr(), 0 if b is None else b.data_ptr(),
                0 if rm is None else rm.data_ptr(), 0 if rv is None else rv.data_ptr(), N, C, L)
        if training:
            _raw.raw_batch_norm_train(*args, momentum, eps)
        elif rm is None:
            raise ValueError(f"{fn}: training=False needs running_mean and running_var "
                             "(or use training=True)")
        else:
            _raw.raw_batch_norm_eval(*args, eps)
        ctx.save_for_backward(x, w, stats)
        ctx.sizes = (N, C, L, training)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, stats = ctx.saved_tensors
        N, C, L, training = ctx.sizes
        need = ctx.needs_input_grad
        dy = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dw = _zeros_or_none(need[1], w)
        db = x.new_zeros(C) if need[2] else None
        _raw.raw_batch_norm_backward(
            x.dtype is _F64, training, 0 if dx is None else dx.data_ptr(),
            0 if dw is None else dw.data_ptr(), 0 if db is None else db.data_ptr(), dy.data_ptr(),
            x.data_ptr(), stats.data_ptr(), 0 if w is None else w.data_ptr(), N, C, L)
        return dx, dw, db, None, None, None, None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm on normlab's kernels (running stats updated in place):
    input (N, C) or (N, C, *) (BatchNorm2d's (N, C, H, W) is read as (N, C, H*W))."""
    if training:
        size = input.size()
        values = size[0]
        for d in size[2:]:
            values *= d
        if values == 1:  # F.batch_norm's own check and message
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {size}")
    running = None if running_mean is None and running_var is None else (running_mean, running_var)
    return _BatchNormFunction.apply(input, weight, bias, running, training, momentum, eps)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm (same arguments, parameters, state_dict) on normlab's kernels."""

    def forward(self, input):
        return _LayerNormFunction.apply(input, self.weight, self.bias, self.normalized_shape,
                                        self.eps)


class _BatchNormForward:
    """torch's _BatchNorm.forward with normlab's batch_norm."""

    def forward(self, input):
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:  # name the input, not the weight it mismatches
            raise ValueError(f"{type(self).__name__}({self.num_features}): input of shape "
                             f"{tuple(input.shape)} has {input.shape[1]} channels, expected "
                             f"{self.num_features}")
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if use_running else None,
                          self.running_var if use_running else None, self.weight, self.bias,
                          bn_training, exponential_average_factor, self.eps)


class BatchNorm1d(_BatchNormForward, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d (same arguments, parameters, buffers, state_dict) on normlab's
    kernels; input (N, C) or (N, C, L)."""


class BatchNorm2d(_BatchNormForward, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d (same arguments, parameters, buffers, state_dict) on normlab's
    kernels: input (N, C, H, W), normalized per channel over N*H*W values on the
    (N, C, H*W) view (no copy for a contiguous NCHW input; a channels_last input is
    copied to NCHW first and the output is NCHW). Errors: ValueError for another
    rank ("expected 4D input") or a channel count other than num_features."""


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, normalized_shape, eps):
        fn = "rms_norm"
        x = _input(fn, input)
        dt = x.dtype
        N, D = _rows(fn, x, normalized_shape)
        w = _param(fn, "weight", weight, dt, normalized_shape)
        out = torch.empty_like(x)
        rstd = x.new_empty(N)
        _raw.raw_rms_norm(dt is _F64, out.data_ptr(), rstd.data_ptr(), x.data_ptr(),
                          0 if w is None else w.data_ptr(), N, D,
                          _FINFO_EPS[dt] if eps is None else eps)
        ctx.save_for_backward(x, w, rstd)
        ctx.sizes = (N, D)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, rstd = ctx.saved_tensors
        N, D = ctx.sizes
        need = ctx.needs_input_grad
        dy = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dw = _zeros_or_none(need[1], w)
        _raw.raw_rms_norm_backward(x.dtype is _F64, 0 if dx is None else dx.data_ptr(),
                                   0 if dw is None else dw.data_ptr(), dy.data_ptr(),
                                   x.data_ptr(), rstd.data_ptr(),
                                   0 if w is None else w.data_ptr(), N, D)
        return dx, dw, None, None


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """torch.nn.functional.rms_norm on normlab's kernels (eps=None: finfo(dtype).eps)."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return _RMSNormFunction.apply(input, weight, tuple(normalized_shape), eps)


class _GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, num_groups, eps):
        fn = "group_norm"
        x = _input(fn, input)
        dt = x.dtype
        shape = x.shape
        if len(shape) < 2:
            raise ValueError(f"{fn}: input must be (N, C, *), got shape {tuple(shape)}")
        N, C = shape[0], shape[1]
        S = 1 if len(shape) == 2 else math.prod(shape[2:])
        w = _param(fn, "weight", weight, dt, (C,))
        b = _param(fn, "bias", bias, dt, (C,))
        out = torch.empty_like(x)
        G = num_groups
        stats = x.new_empty(2 * N * G) if G > 0 else x.new_empty(0)  # mean (N, G), then rstd
        s = stats.data_ptr()
        _raw.raw_group_norm(dt is _F64, out.data_ptr(), s, s + N * G * stats.element_size(),
                            x.data_ptr(), 0 if w is None else w.data_ptr(),
                            0 if b is None else b.data_ptr(), N, C, S, G, eps)
        ctx.save_for_backward(x, w, stats)
        ctx.sizes = (N, C, S, G, b is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, stats = ctx.saved_tensors
        N, C, S, G, has_bias = ctx.sizes
        need = ctx.needs_input_grad
        dy = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dw = _zeros_or_none(need[1], w)
        db = x.new_zeros(C) if need[2] and has_bias else None
        s = stats.data_ptr()
        _raw.raw_group_norm_backward(
            x.dtype is _F64, 0 if dx is None else dx.data_ptr(), 0 if dw is None else dw.data_ptr(),
            0 if db is None else db.data_ptr(), dy.data_ptr(), x.data_ptr(), s,
            s + N * G * stats.element_size(), 0 if w is None else w.data_ptr(), N, C, S, G)
        return dx, dw, db, None, None


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.group_norm on normlab's kernels: input (N, C, *)."""
    return _GroupNormFunction.apply(input, weight, bias, int(num_groups), eps)


class _WeightNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, g, dim):
        v, g = v.contiguous(), g.contiguous()
        w, norms = _nl.weight_norm_interface(v, g, dim)
        ctx.save_for_backward(v, g, norms)
        ctx.dim = dim
        return w

    @staticmethod
    def backward(ctx, grad_w):
        v, g, norms = ctx.saved_tensors
        dv, dg = _nl.weight_norm_interface_backward(grad_w.contiguous(), v, g, norms, ctx.dim)
        return dv, dg, None


def weight_norm(v, g, dim=0):
    """torch._weight_norm(v, g, dim): w = g * v / ||v||, the norm over every dim
    but `dim` (0 or the last); dim=None or -1: one norm over all of v."""
    return _WeightNormFunction.apply(v, g, -1 if dim is None else int(dim))


_RMSNormBase = getattr(nn, "RMSNorm", None)
if _RMSNormBase is None:  # torch < 2.4: nn.RMSNorm's arguments, parameter and state_dict

    class _RMSNormBase(nn.Module):
        def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None,
                     dtype=None):
            super().__init__()
            if isinstance(normalized_shape, int):
                normalized_shape = (normalized_shape,)
            self.normalized_shape = tuple(normalized_shape)
            self.eps, self.elementwise_affine = eps, elementwise_affine
            if elementwise_affine:
                self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device,
                                                      dtype=dtype))
            else:
                self.register_parameter("weight", None)

        def extra_repr(self):
            return (f"{self.normalized_shape}, eps={self.eps}, "
                    f"elementwise_affine={self.elementwise_affine}")


class RMSNorm(_RMSNormBase):
    """torch.nn.RMSNorm (same arguments, parameter, state_dict) on normlab's kernels."""

    def forward(self, input):
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm (same arguments, parameters, state_dict) on normlab's kernels."""

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class _InstanceNormForward:
    """F.instance_norm on normlab's kernels: GroupNorm with one group per channel;
    with track_running_stats the running statistics move as F.instance_norm's
    (the instances' means and unbiased variances averaged over the batch) and
    eval uses them."""

    def forward(self, input):
        self._check_input_dim(input)
        if input.dim() == self._unbatched_dim:  # unbatched (C, *)
            return self.forward(input.unsqueeze(0)).squeeze(0)
        name = type(self).__name__
        if input.size(1) != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels, "
                             f"got input of shape {tuple(input.shape)}")
        if self.running_mean is not None and not self.training:
            return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                              False, 0.0, self.eps)
        if self.training and self.track_running_stats and input.numel() > 0:
            m = self.momentum if self.momentum is not None else 0.0
            with torch.no_grad():
                x = input.detach().flatten(2)
                self.running_mean.mul_(1 - m).add_(m * x.mean(2).mean(0))
                self.running_var.mul_(1 - m).add_(m * x.var(2, unbiased=True).mean(0))
        return group_norm(input, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm1d(_InstanceNormForward, nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d (same arguments, buffers, state_dict) on normlab's
    kernels; input (N, C, L) or unbatched (C, L)."""

    _unbatched_dim = 2


class InstanceNorm2d(_InstanceNormForward, nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d (same arguments, buffers, state_dict) on normlab's
    kernels; input (N, C, H, W) or unbatched (C, H, W), normalized per (sample,
    channel) over H*W values (GroupNorm's kernels with num_groups = C)."""

    _unbatched_dim = 3


def _check_bn_input(name, x, C):
    if x.dim() not in (2, 3) or x.shape[1] != C:
        raise ValueError(f"{name}: expected input (N, {C}) or (N, {C}, L), got {tuple(x.shape)}")


def _momentum_factor(momentum, num_batches_tracked):
    return 1.0 / float(num_batches_tracked) if momentum is None else momentum


class _BatchRenormFunction(torch.autograd.Function):
    # stats: a dict the forward fills with the batch mean, variance, r and d.
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, rmax, dmax, eps, stats):
        x, w, b = input.contiguous(), _c(weight), _c(bias)
        out, mean, invstd, var, r, d = _nl.native_batch_renorm(x, w, b, running_mean, running_var,
                                                               rmax, dmax, eps)
        ctx.save_for_backward(x, w, mean, invstd, r, d)
        stats.update(mean=mean, var=var, r=r, d=d)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, mean, invstd, r, d = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = _nl.native_batch_renorm_backward(
            grad_out.contiguous(), x, w, mean, invstd, r, d,
            (need[0], need[1] and w is not None, need[2] and w is not None))
        return dx, dw, db, None, None, None, None, None, None


class BatchRenorm1d(nn.Module):
    """Batch Renormalization (Ioffe 2017, Algorithm 1) on normlab's kernels; input
    (N, C) or (N, C, L). r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B -
    running_mean) / sigma, -dmax, dmax), sigma = sqrt(running_var + eps), held
    constant in the backward; y = weight * ((x - mean_B) / sigma_B * r + d) + bias.
    rmax, dmax: 1 and 0 for `warmup` steps, then linear over rmax_ramp / dmax_ramp
    steps. Running statistics as BatchNorm1d's; eval is BatchNorm1d's eval.
    State (as normlab's checkpoints): weight, bias, running_mean, running_var,
    num_batches_tracked."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, rmax=3.0, dmax=5.0,
                 warmup=0, rmax_ramp=0, dmax_ramp=0, device=None, dtype=None):
        super().__init__()
        f = dict(device=device, dtype=dtype)
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.rmax, self.dmax = rmax, dmax
        self.warmup, self.rmax_ramp, self.dmax_ramp = warmup, rmax_ramp, dmax_ramp
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **f))
            self.bias = nn.Parameter(torch.zeros(num_features, **f))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **f))
        self.register_buffer("running_var", torch.ones(num_features, **f))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, rmax={self.rmax}, dmax={self.dmax}, warmup={self.warmup}, "
                f"rmax_ramp={self.rmax_ramp}, dmax_ramp={self.dmax_ramp}")

    def _fraction(self, step, ramp):
        if step < self.warmup:
            return 0.0
        return 1.0 if ramp == 0 else min(1.0, (step - self.warmup) / ramp)

    def limits(self, step):
        """(rmax, dmax) of the training step after `step` completed ones."""
        return (1 + (self.rmax - 1) * self._fraction(step, self.rmax_ramp),
                self.dmax * self._fraction(step, self.dmax_ramp))

    def forward(self, input):
        _check_bn_input("BatchRenorm1d", input, self.num_features)
        if not self.training:
            return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                              False, 0.0, self.eps)
        if input.numel() // self.num_features == 1:
            raise ValueError("BatchRenorm1d: expected more than 1 value per channel when "
                             f"training, got input of shape {tuple(input.shape)}")
        step = int(self.num_batches_tracked.item())
        self.num_batches_tracked.add_(1)
        if input.numel() == 0:
            return input.clone()
        rmax, dmax = self.limits(step)
        stats = {}
        y = _BatchRenormFunction.apply(input, self.weight, self.bias, self.running_mean,
                                       self.running_var, rmax, dmax, self.eps, stats)
        self.last_r, self.last_d = stats["r"], stats["d"]
        n = input.numel() // self.num_features
        f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
        with torch.no_grad():
            self.running_mean.mul_(1 - f).add_(f * stats["mean"])
            self.running_var.mul_(1 - f).add_(f * stats["var"] * (n / (n - 1)))
        return y


class GhostBatchNorm1d(nn.Module):
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, section 4) on
    normlab's BatchNorm kernels: in training each virtual batch of
    virtual_batch_size consecutive samples (the last holds the remainder) is
    normalized with its own statistics and moves the running statistics once, in
    order (num_batches_tracked counts virtual batches). Eval: BatchNorm1d's
    (without tracking: the virtual-batch normalization). State: BatchNorm1d's."""

    def __init__(self, num_features, virtual_batch_size=32, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        if virtual_batch_size < 1:
            raise ValueError(f"GhostBatchNorm1d: virtual_batch_size must be >= 1, "
                             f"got {virtual_batch_size}")
        f = dict(device=device, dtype=dtype)
        self.num_features, self.virtual_batch_size = num_features, virtual_batch_size
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **f))
            self.bias = nn.Parameter(torch.zeros(num_features, **f))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **f))
            self.register_buffer("running_var", torch.ones(num_features, **f))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self):
        return (f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, "
                f"eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def forward(self, input):
        _check_bn_input("GhostBatchNorm1d", input, self.num_features)
        if not self.training and self.track_running_stats:
            return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                              False, 0.0, self.eps)
        update = self.training and self.track_running_stats
        if input.shape[0] == 0:
            if update:
                self.num_batches_tracked.add_(1)
            return input.clone()
        chunks = input.split(self.virtual_batch_size)
        if any(c.numel() // self.num_features == 1 for c in chunks):
            raise ValueError("GhostBatchNorm1d: expected more than 1 value per channel in every "
                             f"virtual batch, got input of shape {tuple(input.shape)} with "
                             f"virtual_batch_size={self.virtual_batch_size}")
        out = []
        for chunk in chunks:
            if update:
                self.num_batches_tracked.add_(1)
                f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
                out.append(batch_norm(chunk, self.running_mean, self.running_var, self.weight,
                                      self.bias, True, f, self.eps))
            else:
                out.append(batch_norm(chunk, None, None, self.weight, self.bias, True, 0.0,
                                      self.eps))
        return torch.cat(out)


class _MeanOnlyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, bias, running_mean, training, stats):
        out, mean = _nl.native_mean_only_batch_norm(input.contiguous(), _c(bias), running_mean,
                                                    training)
        ctx.training, ctx.has_bias = training, bias is not None
        stats["mean"] = mean
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need = ctx.needs_input_grad
        dx, db = _nl.native_mean_only_batch_norm_backward(
            grad_out.contiguous(), ctx.training, ctx.has_bias, (True, need[1] and ctx.has_bias))
        return (dx if need[0] else None), db, None, None, None


class MeanOnlyBatchNorm1d(nn.Module):
    """Mean-only batch normalization (Salimans & Kingma 2016, section 2.2) on
    normlab's kernels: y = x - mean_B + bias in training, x - running_mean + bias
    in eval; no weight and no variance. State: bias, running_mean,
    num_batches_tracked (as normlab's checkpoints)."""

    def __init__(self, num_features, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        f = dict(device=device, dtype=dtype)
        self.num_features, self.momentum = num_features, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.bias = nn.Parameter(torch.zeros(num_features, **f))
        else:
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **f))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self):
        return (f"{self.num_features}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def forward(self, input):
        _check_bn_input("MeanOnlyBatchNorm1d", input, self.num_features)
        stats = {}
        if self.training or not self.track_running_stats:
            y = _MeanOnlyFunction.apply(input, self.bias, None, True, stats)
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if input.numel() != 0:
                    f = _momentum_factor(self.momentum, self.num_batches_tracked.item())
                    with torch.no_grad():
                        self.running_mean.mul_(1 - f).add_(f * stats["mean"])
            return y
        return _MeanOnlyFunction.apply(input, self.bias, self.running_mean, False, stats)
