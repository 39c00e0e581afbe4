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
  rms_norm(input, normalized_shape, weight=None, eps=None)               -> output
  native_rms_norm(input, normalized_shape, weight, eps)                  -> (output, rstd)
  native_rms_norm_backward(grad_out, input, normalized_shape, rstd, weight, output_mask)
                                                   -> (grad_input, grad_weight)
  group_norm(input, num_groups, weight=None, bias=None, eps=1e-5)        -> output
  native_group_norm(input, weight, bias, N, C, HxW, group, eps)          -> (output, mean, rstd)
  native_group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group, output_mask)
                                                   -> (grad_input, grad_weight, grad_bias)
  weight_norm(v, g, dim=0)                                               -> w  (torch._weight_norm)
  weight_norm_interface(v, g, dim=0)                                     -> (w, norms)
  weight_norm_interface_backward(grad_w, saved_v, saved_g, saved_norms, dim) -> (grad_v, grad_g)
  PyTorch lacks these (docs/model-spec.md; normlab.torch has the modules):
  native_batch_renorm(input, weight, bias, running_mean, running_var, rmax, dmax, eps)
                                                   -> (output, save_mean, save_invstd, var, r, d)
  native_batch_renorm_backward(grad_out, input, weight, save_mean, save_invstd, r, d, output_mask)
  native_mean_only_batch_norm(input, bias, running_mean, training)      -> (output, mean)
  native_mean_only_batch_norm_backward(grad_out, train, has_bias, output_mask)
                                                   -> (grad_input, grad_bias)

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
from .train import Model, default_data_dir  # noqa: E402  (the training API)

__version__ = "0.1.0"
__all__ = [
    "layer_norm",
    "native_layer_norm",
    "native_layer_norm_backward",
    "batch_norm",
    "native_batch_norm",
    "native_batch_norm_backward",
    "build_summary",
    "Model",
    "default_data_dir",
    "rms_norm",
    "native_rms_norm",
    "native_rms_norm_backward",
    "group_norm",
    "native_group_norm",
    "native_group_norm_backward",
    "weight_norm",
    "weight_norm_interface",
    "weight_norm_interface_backward",
    "native_batch_renorm",
    "native_batch_renorm_backward",
    "native_mean_only_batch_norm",
    "native_mean_only_batch_norm_backward",
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
    return type(x).__module__.startswith("torch")


def _arg(fn: str, name: str, x, optional: bool = False):
    """x as the extension takes it: arrays and DLPack tensors pass as they are."""
    if x is None:
        if optional:
            return None
        raise TypeError(f"{fn}: {name} must be an array, got None")
    if _is_torch(x):
        t = x.detach() if x.requires_grad else x
        if t.device.type != "cpu":
            raise TypeError(f"{fn}: {name} is on {t.device}; normlab's kernels run on the CPU")
        try:  # a NumPy view of the same memory: much cheaper to pass than torch's __dlpack__
            return t.numpy()
        except (TypeError, RuntimeError):  # bfloat16, conjugate bits, ...: DLPack's own errors
            return t
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


def _mask(output_mask):
    return [bool(m) for m in output_mask]


def _finfo_eps(x) -> float:
    """torch.finfo(x.dtype).eps: F.rms_norm's eps=None."""
    return 1.1920928955078125e-07 if "float32" in str(x.dtype) else 2.220446049250313e-16


def native_rms_norm(input, normalized_shape, weight, eps):
    """RMSNorm's forward: (output, rstd), rstd = 1/sqrt(mean(x^2) + eps) with the
    input's leading dims followed by ones (torch._fused_rms_norm's rstd)."""
    fn = "rms_norm"
    x = _arg(fn, "input", input)
    out = _normlab.rms_norm_forward(x, _shape(fn, normalized_shape),
                                    _arg(fn, "weight", weight, True),
                                    float(_finfo_eps(x) if eps is None else eps))
    return tuple(_like(input, a) for a in out)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """torch.nn.functional.rms_norm (eps=None: the dtype's machine epsilon)."""
    return native_rms_norm(input, normalized_shape, weight, eps)[0]


def native_rms_norm_backward(grad_out, input, normalized_shape, rstd, weight,
                             output_mask=(True, True)):
    """RMSNorm's backward from the saved rstd: (grad_input, grad_weight)."""
    fn = "rms_norm_backward"
    out = _normlab.rms_norm_backward(
        _arg(fn, "grad_out", grad_out), _arg(fn, "input", input), _shape(fn, normalized_shape),
        _arg(fn, "rstd", rstd), _arg(fn, "weight", weight, True), _mask(output_mask))
    return tuple(_like(input, a) for a in out)


def native_group_norm(input, weight, bias, N, C, HxW, group, eps):
    """torch.native_group_norm: (output, mean (N, group), rstd (N, group))."""
    fn = "group_norm"
    out = _normlab.group_norm_forward(
        _arg(fn, "input", input), _arg(fn, "weight", weight, True), _arg(fn, "bias", bias, True),
        int(N), int(C), int(HxW), int(group), float(eps))
    return tuple(_like(input, a) for a in out)


def _nchw(fn, input):
    shape = tuple(int(d) for d in input.shape)
    if len(shape) < 2:
        raise ValueError(f"{fn}: input must be (N, C, *), got shape {shape}")
    hxw = 1
    for d in shape[2:]:
        hxw *= d
    return shape[0], shape[1], hxw


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.group_norm: input (N, C, *), C divisible by num_groups."""
    N, C, HxW = _nchw("group_norm", _arg("group_norm", "input", input))
    return native_group_norm(input, weight, bias, N, C, HxW, num_groups, eps)[0]


def native_group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group,
                               output_mask=(True, True, True)):
    """torch.ops.aten.native_group_norm_backward: (grad_input, grad_weight, grad_bias)."""
    fn = "group_norm_backward"
    out = _normlab.group_norm_backward(
        _arg(fn, "grad_out", grad_out), _arg(fn, "input", input), _arg(fn, "mean", mean),
        _arg(fn, "rstd", rstd), _arg(fn, "weight", weight, True), int(N), int(C), int(HxW),
        int(group), _mask(output_mask))
    return tuple(_like(input, a) for a in out)


def weight_norm_interface(v, g, dim=0):
    """torch._weight_norm_interface: (w, norms), w = g * v / ||v|| with the norm
    over every dim but `dim`; dim 0, the last dim, or -1 (one norm over all of v,
    as torch._weight_norm(v, g, -1) and nn.utils.weight_norm(dim=None)).
    g and norms have v's rank with ones except at dim (-1: g any one-value array)."""
    fn = "weight_norm"
    out = _normlab.weight_norm_forward(_arg(fn, "v", v), _arg(fn, "g", g), int(dim))
    return tuple(_like(v, a) for a in out)


def weight_norm(v, g, dim=0):
    """torch._weight_norm: w = g * v / ||v|| (no autograd: see normlab.torch)."""
    return weight_norm_interface(v, g, dim)[0]


def weight_norm_interface_backward(grad_w, saved_v, saved_g, saved_norms, dim):
    """torch._weight_norm_interface_backward: (grad_v, grad_g)."""
    fn = "weight_norm_backward"
    out = _normlab.weight_norm_backward(
        _arg(fn, "grad_w", grad_w), _arg(fn, "saved_v", saved_v), _arg(fn, "saved_g", saved_g),
        _arg(fn, "saved_norms", saved_norms), int(dim))
    return tuple(_like(saved_v, a) for a in out)


def native_batch_renorm(input, weight, bias, running_mean, running_var, rmax, dmax, eps):
    """Batch Renormalization's training forward (Ioffe 2017, Algorithm 1), input
    (N, C) or (N, C, L): (output, save_mean, save_invstd, var, r, d), each (C,)
    but output; var is the biased batch variance; running stats are read only."""
    fn = "batch_renorm"
    out = _normlab.batch_renorm_forward(
        _arg(fn, "input", input), _arg(fn, "weight", weight, True), _arg(fn, "bias", bias, True),
        _arg(fn, "running_mean", running_mean), _arg(fn, "running_var", running_var),
        float(rmax), float(dmax), float(eps))
    return tuple(_like(input, a) for a in out)


def native_batch_renorm_backward(grad_out, input, weight, save_mean, save_invstd, r, d,
                                 output_mask=(True, True, True)):
    """Batch Renormalization's backward with r, d constant: (grad_input, grad_weight, grad_bias)."""
    fn = "batch_renorm_backward"
    out = _normlab.batch_renorm_backward(
        _arg(fn, "grad_out", grad_out), _arg(fn, "input", input),
        _arg(fn, "weight", weight, True), _arg(fn, "save_mean", save_mean),
        _arg(fn, "save_invstd", save_invstd), _arg(fn, "r", r), _arg(fn, "d", d),
        _mask(output_mask))
    return tuple(_like(input, a) for a in out)


def native_mean_only_batch_norm(input, bias, running_mean, training):
    """Mean-only BatchNorm (Salimans & Kingma 2016, 2.2): y = x - mean + bias with
    the batch mean (training) or running_mean; (output, mean (C,)). Read-only stats."""
    fn = "mean_only_batch_norm"
    out = _normlab.mean_only_forward(_arg(fn, "input", input), _arg(fn, "bias", bias, True),
                                     _arg(fn, "running_mean", running_mean, True),
                                     bool(training))
    return tuple(_like(input, a) for a in out)


def native_mean_only_batch_norm_backward(grad_out, train, has_bias, output_mask=(True, True)):
    """(grad_input, grad_bias): train dx = dy - mean_c(dy), eval dx = dy; dbias = sum dy."""
    fn = "mean_only_batch_norm_backward"
    out = _normlab.mean_only_backward(_arg(fn, "grad_out", grad_out), bool(train),
                                      bool(has_bias), _mask(output_mask))
    return tuple(_like(grad_out, a) for a in out)
