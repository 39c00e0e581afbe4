"""normlab's LayerNorm and BatchNorm kernels for NumPy arrays and DLPack tensors.

Functional forms with PyTorch's names and argument names (float32 or float64,
C-contiguous, on the CPU; inputs are read in place, never copied):

  layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)  -> output
  native_layer_norm(input, normalized_shape, weight, bias, eps)          -> (output, mean, rstd)
  native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                             output_mask)          -> (grad_input, grad_weight, grad_bias)
  batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
             momentum=0.1, eps=1e-5)                                     -> output
  native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)
                                                   -> (output, save_mean, save_invstd)
  native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                             save_invstd, train, eps, output_mask)
                                                   -> (grad_input, grad_weight, grad_bias)

Shapes as in PyTorch: LayerNorm normalizes the trailing dims `normalized_shape`
of any input, mean/rstd have the input's leading dims followed by ones;
BatchNorm takes (N, C) or (N, C, *) with per-channel statistics over all but
dim 1, save_mean/save_invstd are (C,) in training and empty (0,) in eval (as
PyTorch's CPU kernel), and training updates running_mean/running_var in place
(running_var with the unbiased variance). Outputs are new arrays: NumPy
arrays, or torch tensors when `input` is one (torch.from_numpy, no copy).
Gradients of parameters that are None, or masked off in output_mask, are None.

Errors: TypeError for a dtype other than float32/float64 (or one that differs
from input's) or a non-array; ValueError for a wrong shape, a non-contiguous
array, a bad eps, or one value per channel in training; each names the
argument and the numbers. normlab.torch holds the autograd modules.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _normlab

__version__ = "0.1.0"
__all__ = [
    "layer_norm",
    "native_layer_norm",
    "native_layer_norm_backward",
    "batch_norm",
    "native_batch_norm",
    "native_batch_norm_backward",
    "build_summary",
    "kernel_isa",
]


def build_summary() -> str:
    """What the kernels were compiled for and the CPU they run on (normlab --version)."""
    return _normlab.build_summary()


def kernel_isa() -> str:
    """The instruction-set level the kernels run at: "default" (SSE4.2), "avx2" or
    "avx512"; the best the CPU has, or a lower one named by the environment
    variable NORMLAB_CPU_CAPABILITY (read once; a bad value is an error naming it)."""
    return _normlab.kernel_isa()


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _arg(fn: str, name: str, x, optional: bool = False):
    """x as the extension takes it: arrays and DLPack tensors pass as they are."""
    if x is None:
        if optional:
            return None
        raise TypeError(f"{fn}: {name} must be an array, got None")
    if _is_torch(x):
        return x.detach() if x.requires_grad else x
    if hasattr(x, "__dlpack__") or hasattr(x, "__array_interface__"):
        return x
    raise TypeError(f"{fn}: {name} must be a NumPy array or a DLPack tensor, got {type(x).__name__}")


def _like(ref, arr):
    if arr is None or not _is_torch(ref):
        return arr
    import torch

    return torch.from_numpy(arr)


def _shape(fn: str, normalized_shape) -> list[int]:
    if isinstance(normalized_shape, int):
        return [normalized_shape]
    if isinstance(normalized_shape, Sequence) or _is_torch(normalized_shape):
        return [int(d) for d in normalized_shape]
    raise TypeError(f"{fn}: normalized_shape must be an int or a sequence of ints, "
                    f"got {type(normalized_shape).__name__}")


def native_layer_norm(input, normalized_shape, weight, bias, eps):
    """torch.native_layer_norm: (output, mean, rstd) with rstd = 1/sqrt(var + eps)."""
    fn = "layer_norm"
    out = _normlab.layer_norm_forward(_arg(fn, "input", input), _shape(fn, normalized_shape),
                                      _arg(fn, "weight", weight, True),
                                      _arg(fn, "bias", bias, True), float(eps))
    return tuple(_like(input, a) for a in out)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm (no autograd: see normlab.torch)."""
    return native_layer_norm(input, normalized_shape, weight, bias, eps)[0]


def native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                               output_mask=(True, True, True)):
    """torch.ops.aten.native_layer_norm_backward: (grad_input, grad_weight, grad_bias)."""
    fn = "layer_norm_backward"
    out = _normlab.layer_norm_backward(
        _arg(fn, "grad_out", grad_out), _arg(fn, "input", input), _shape(fn, normalized_shape),
        _arg(fn, "mean", mean), _arg(fn, "rstd", rstd), _arg(fn, "weight", weight, True),
        _arg(fn, "bias", bias, True), [bool(m) for m in output_mask])
    return tuple(_like(input, a) for a in out)


def native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """torch.native_batch_norm: (output, save_mean, save_invstd); updates the running stats."""
    fn = "batch_norm"
    out = _normlab.batch_norm_forward(
        _arg(fn, "input", input), _arg(fn, "weight", weight, True), _arg(fn, "bias", bias, True),
        _arg(fn, "running_mean", running_mean, True), _arg(fn, "running_var", running_var, True),
        bool(training), float(momentum), float(eps))
    return tuple(_like(input, a) for a in out)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm (no autograd: see normlab.torch)."""
    return native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
                             eps)[0]


def native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                               save_invstd, train, eps, output_mask=(True, True, True)):
    """torch.ops.aten.native_batch_norm_backward: (grad_input, grad_weight, grad_bias).

    train=True uses save_mean/save_invstd from the forward; train=False the
    running statistics and eps (the statistics are then constants)."""
    fn = "batch_norm_backward"
    out = _normlab.batch_norm_backward(
        _arg(fn, "grad_out", grad_out), _arg(fn, "input", input),
        _arg(fn, "weight", weight, True), _arg(fn, "running_mean", running_mean, True),
        _arg(fn, "running_var", running_var, True), _arg(fn, "save_mean", save_mean, True),
        _arg(fn, "save_invstd", save_invstd, True), bool(train), float(eps),
        [bool(m) for m in output_mask])
    return tuple(_like(input, a) for a in out)
