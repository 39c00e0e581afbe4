"""normlab's kernels inside PyTorch: autograd functions and drop-in modules.

  normlab.torch.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)
  normlab.torch.batch_norm(input, running_mean, running_var, weight=None, bias=None,
                           training=False, momentum=0.1, eps=1e-5)
  normlab.torch.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, ...)
  normlab.torch.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
                            track_running_stats=True, ...)

The functions are torch.nn.functional's, differentiable through
torch.autograd.Function (first derivatives; double backward is not supported).
The modules subclass torch.nn.LayerNorm and torch.nn.BatchNorm1d and replace
only forward(), so constructor arguments, parameters, buffers, state_dict keys,
repr and load_state_dict are PyTorch's own. CPU tensors of float32 or float64;
non-contiguous inputs are made contiguous (one copy) first.
"""

from __future__ import annotations

import torch
from torch import nn

import normlab as _nl

__all__ = ["layer_norm", "batch_norm", "LayerNorm", "BatchNorm1d"]


def _c(t):
    return None if t is None else t.contiguous()


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, normalized_shape, eps):
        x, w, b = input.contiguous(), _c(weight), _c(bias)
        out, mean, rstd = _nl.native_layer_norm(x, normalized_shape, w, b, eps)
        ctx.save_for_backward(x, w, b, mean, rstd)
        ctx.normalized_shape = normalized_shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, b, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = _nl.native_layer_norm_backward(
            grad_out.contiguous(), x, ctx.normalized_shape, mean, rstd, w, b,
            (need[0], need[1] and w is not None, need[2] and b is not None))
        return dx, dw, db, None, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm on normlab's kernels."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return _LayerNormFunction.apply(input, weight, bias, tuple(normalized_shape), eps)


class _BatchNormFunction(torch.autograd.Function):
    # running = (running_mean, running_var) or None, passed as one non-tensor
    # argument: the forward updates them in place, outside autograd, as PyTorch does.
    @staticmethod
    def forward(ctx, input, weight, bias, running, training, momentum, eps):
        x, w, b = input.contiguous(), _c(weight), _c(bias)
        rm, rv = running if running is not None else (None, None)
        out, save_mean, save_invstd = _nl.native_batch_norm(x, w, b, rm, rv, training, momentum,
                                                            eps)
        if training:
            ctx.save_for_backward(x, w, save_mean, save_invstd)
        else:  # the statistics are constants: the running ones, as they are now
            ctx.save_for_backward(x, w, rm.clone(), rv.clone())
        ctx.training, ctx.eps = training, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, s1, s2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        if ctx.training:
            rm = rv = None
            save_mean, save_invstd = s1, s2
        else:
            rm, rv = s1, s2
            save_mean = save_invstd = None
        dx, dw, db = _nl.native_batch_norm_backward(
            grad_out.contiguous(), x, w, rm, rv, save_mean, save_invstd, ctx.training, ctx.eps,
            (need[0], need[1] and w is not None, need[2]))
        return dx, dw, (db if need[2] else None), None, None, None, None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm on normlab's kernels (running stats updated in place)."""
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
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class BatchNorm1d(nn.BatchNorm1d):
    """torch.nn.BatchNorm1d (same arguments, parameters, buffers, state_dict) on normlab's kernels.

    forward() is torch's _BatchNorm.forward with normlab's batch_norm."""

    def forward(self, input):
        self._check_input_dim(input)
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
