// normlab._normlab.raw_*: the kernels behind normlab.torch's autograd functions,
// one call per forward and one per backward, on memory that torch allocated.
// Every array is passed as its address (Tensor.data_ptr(), 0 for "absent") and
// the sizes as integers: no DLPack or NumPy wrapping per call, which cost
// ~10-30 us of Python work per tensor (docs/performance.md, "Python:
// normlab.torch against torch.nn"). The caller (python/normlab/torch.py) has
// checked dtype, device, contiguity and shapes once; here only values
// (eps, sizes) are checked, each failure a ValueError naming the numbers.
// `dbl` selects float64, else float32. Outputs are written in place; the
// parameter gradients are accumulated (+=), so the caller passes zeros.
#include <nanobind/nanobind.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "normlab/groupnorm_kernels.hpp"
#include "normlab/kernels.hpp"
#include "normlab/rmsnorm.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Addr = uintptr_t;

template <typename T>
T* p(Addr a) {
  return reinterpret_cast<T*>(a);
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw nb::value_error(os.str().c_str());
}

void check_sizes(const char* fn, int64_t a, int64_t b, int64_t c = 1) {
  if (a < 0 || b < 0 || c < 0) fail(fn, ": negative size (", a, ", ", b, ", ", c, ")");
}

template <typename T>
bool overflowed(const T* mean, const T* rstd, int64_t n) {  // as normlab_ext.cpp
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(mean[i]) || !(rstd[i] > 0) || !std::isfinite(rstd[i])) return true;
  return false;
}

// ---- LayerNorm: x (N, D); mean, rstd (N) ----
template <typename T>
void ln_fwd_t(Addr y, Addr mean, Addr rstd, Addr x, Addr w, Addr b, int64_t N, int64_t D,
              double eps) {
  nb::gil_scoped_release unlocked;
  normlab::layernorm_forward<T>(p<T>(y), p<T>(mean), p<T>(rstd), p<const T>(x), p<const T>(w),
                                p<const T>(b), N, D, static_cast<T>(eps));
  if (overflowed(p<T>(mean), p<T>(rstd), N))  // the moments in T overflowed: redo exactly
    normlab::ref::layernorm_forward<T>(p<T>(y), p<T>(mean), p<T>(rstd), p<const T>(x),
                                       p<const T>(w), p<const T>(b), N, D, static_cast<T>(eps));
}

void ln_fwd(bool dbl, Addr y, Addr mean, Addr rstd, Addr x, Addr w, Addr b, int64_t N, int64_t D,
            double eps) {
  check_sizes("layer_norm", N, D);
  if (!(eps >= 0)) fail("layer_norm: eps must be >= 0, got ", eps);
  if (N == 0 || D == 0) return;
  (dbl ? ln_fwd_t<double> : ln_fwd_t<float>)(y, mean, rstd, x, w, b, N, D, eps);
}

template <typename T>
void ln_bwd_t(Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr mean, Addr rstd, Addr w, int64_t N,
              int64_t D) {
  nb::gil_scoped_release unlocked;
  normlab::layernorm_backward<T>(p<T>(dx), p<T>(dw), p<T>(db), p<const T>(dy), p<const T>(x),
                                 p<const T>(mean), p<const T>(rstd), p<const T>(w), N, D);
}

void ln_bwd(bool dbl, Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr mean, Addr rstd, Addr w,
            int64_t N, int64_t D) {
  check_sizes("layer_norm_backward", N, D);
  if (N == 0 || D == 0 || (!dx && !dw && !db)) return;
  (dbl ? ln_bwd_t<double> : ln_bwd_t<float>)(dx, dw, db, dy, x, mean, rstd, w, N, D);
}

// ---- RMSNorm: x (N, D); rstd (N) ----
template <typename T>
void rms_fwd_t(Addr y, Addr rstd, Addr x, Addr w, int64_t N, int64_t D, double eps) {
  nb::gil_scoped_release unlocked;  // sums of squares in double: no overflow fallback needed
  normlab::rmsnorm_forward<T>(p<T>(y), p<T>(rstd), p<const T>(x), p<const T>(w), N, D,
                              static_cast<T>(eps));
}

void rms_fwd(bool dbl, Addr y, Addr rstd, Addr x, Addr w, int64_t N, int64_t D, double eps) {
  check_sizes("rms_norm", N, D);
  if (!(eps >= 0)) fail("rms_norm: eps must be >= 0, got ", eps);
  if (N == 0 || D == 0) return;
  (dbl ? rms_fwd_t<double> : rms_fwd_t<float>)(y, rstd, x, w, N, D, eps);
}

template <typename T>
void rms_bwd_t(Addr dx, Addr dw, Addr dy, Addr x, Addr rstd, Addr w, int64_t N, int64_t D) {
  nb::gil_scoped_release unlocked;
  normlab::rmsnorm_backward<T>(p<T>(dx), p<T>(dw), p<const T>(dy), p<const T>(x), p<const T>(rstd),
                               p<const T>(w), N, D);
}

void rms_bwd(bool dbl, Addr dx, Addr dw, Addr dy, Addr x, Addr rstd, Addr w, int64_t N, int64_t D) {
  check_sizes("rms_norm_backward", N, D);
  if (N == 0 || D == 0 || (!dx && !dw)) return;
  (dbl ? rms_bwd_t<double> : rms_bwd_t<float>)(dx, dw, dy, x, rstd, w, N, D);
}

// ---- GroupNorm: x (N, C, S); mean, rstd (N, G) ----
void gn_check(const char* fn, int64_t N, int64_t C, int64_t S, int64_t G) {
  check_sizes(fn, N, C, S);
  if (G <= 0 || C % G != 0)
    fail(fn, ": num_groups ", G, " must be positive and divide the number of channels ", C);
}

template <typename T>
void gn_fwd_t(Addr y, Addr mean, Addr rstd, Addr x, Addr w, Addr b, int64_t N, int64_t C, int64_t S,
              int64_t G, double eps) {
  nb::gil_scoped_release unlocked;
  normlab::groupnorm_forward<T>(p<T>(y), p<T>(mean), p<T>(rstd), nullptr, p<const T>(x),
                                p<const T>(w), p<const T>(b), N, C, S, G, static_cast<T>(eps));
  if (overflowed(p<T>(mean), p<T>(rstd), N * G))
    normlab::ref::groupnorm_forward<T>(p<T>(y), p<T>(mean), p<T>(rstd), nullptr, p<const T>(x),
                                       p<const T>(w), p<const T>(b), N, C, S, G,
                                       static_cast<T>(eps));
}

void gn_fwd(bool dbl, Addr y, Addr mean, Addr rstd, Addr x, Addr w, Addr b, int64_t N, int64_t C,
            int64_t S, int64_t G, double eps) {
  gn_check("group_norm", N, C, S, G);
  if (!(eps > 0)) fail("group_norm: eps must be positive, got ", eps);
  if (N * C * S == 0) {  // torch: mean/rstd of an empty group are zeros
    if (dbl)
      std::fill_n(p<double>(mean), N * G, 0.0), std::fill_n(p<double>(rstd), N * G, 0.0);
    else
      std::fill_n(p<float>(mean), N * G, 0.0f), std::fill_n(p<float>(rstd), N * G, 0.0f);
    return;
  }
  (dbl ? gn_fwd_t<double> : gn_fwd_t<float>)(y, mean, rstd, x, w, b, N, C, S, G, eps);
}

template <typename T>
void gn_bwd_t(Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr mean, Addr rstd, Addr w, int64_t N,
              int64_t C, int64_t S, int64_t G) {
  nb::gil_scoped_release unlocked;
  normlab::groupnorm_backward<T>(p<T>(dx), p<T>(dw), p<T>(db), p<const T>(dy), p<const T>(x),
                                 p<const T>(mean), p<const T>(rstd), p<const T>(w), N, C, S, G);
}

void gn_bwd(bool dbl, Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr mean, Addr rstd, Addr w,
            int64_t N, int64_t C, int64_t S, int64_t G) {
  gn_check("group_norm_backward", N, C, S, G);
  if (N * C * S == 0 || (!dx && !dw && !db)) return;
  (dbl ? gn_bwd_t<double> : gn_bwd_t<float>)(dx, dw, db, dy, x, mean, rstd, w, N, C, S, G);
}

// ---- BatchNorm: x (N, C, L); stats (2, C): the mean and 1/sqrt(var + eps) used ----

// Training: batch statistics into stats; running_mean/var (0: none) moved by
// momentum in double with the unbiased variance, as BatchNorm1d.
template <typename T>
void bn_fwd_train_t(Addr y, Addr stats, Addr x, Addr w, Addr b, Addr rm, Addr rv, int64_t N,
                    int64_t C, int64_t L, double momentum, double eps) {
  T* mean = p<T>(stats);
  T* rstd = mean + C;
  nb::gil_scoped_release unlocked;
  std::vector<T> var(static_cast<size_t>(C));
  normlab::batchnorm_forward_train<T>(p<T>(y), mean, rstd, var.data(), p<const T>(x), p<const T>(w),
                                      p<const T>(b), N, C, L, static_cast<T>(eps));
  if (overflowed(mean, rstd, C))
    normlab::ref::batchnorm_forward_train<T>(p<T>(y), mean, rstd, var.data(), p<const T>(x),
                                             p<const T>(w), p<const T>(b), N, C, L,
                                             static_cast<T>(eps));
  if (rm && rv) {
    T* m = p<T>(rm);
    T* v = p<T>(rv);
    const double f = momentum;
    const double unbias = static_cast<double>(N * L) / static_cast<double>(N * L - 1);
    for (int64_t c = 0; c < C; ++c) {
      m[c] = static_cast<T>((1 - f) * m[c] + f * mean[c]);
      v[c] = static_cast<T>((1 - f) * v[c] + f * var[c] * unbias);
    }
  }
}

void bn_fwd_train(bool dbl, Addr y, Addr stats, Addr x, Addr w, Addr b, Addr rm, Addr rv, int64_t N,
                  int64_t C, int64_t L, double momentum, double eps) {
  const char* fn = "batch_norm";
  check_sizes(fn, N, C, L);
  if (N * L == 1) fail(fn, ": expected more than 1 value per channel when training, got ", N * L);
  if (!(eps > 0))
    fail(fn, ": eps must be positive when normalizing with batch statistics, got ", eps);
  if (N * L == 0 || C == 0) {  // an empty batch: zeros, as before any data; no update
    if (dbl)
      std::fill_n(p<double>(stats), 2 * C, 0.0);
    else
      std::fill_n(p<float>(stats), 2 * C, 0.0f);
    return;
  }
  (dbl ? bn_fwd_train_t<double> : bn_fwd_train_t<float>)(y, stats, x, w, b, rm, rv, N, C, L,
                                                         momentum, eps);
}

// Eval: the running statistics, copied into stats (mean, 1/sqrt(var + eps)) for the backward.
template <typename T>
void bn_fwd_eval_t(Addr y, Addr stats, Addr x, Addr w, Addr b, Addr rm, Addr rv, int64_t N,
                   int64_t C, int64_t L, double eps) {
  T* mean = p<T>(stats);
  T* rstd = mean + C;
  const T* m = p<const T>(rm);
  const T* v = p<const T>(rv);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = m[c];
    rstd[c] = static_cast<T>(1 / std::sqrt(static_cast<double>(v[c]) + eps));
  }
  if (N * L == 0) return;
  nb::gil_scoped_release unlocked;
  normlab::batchnorm_forward_eval<T>(p<T>(y), p<const T>(x), m, v, p<const T>(w), p<const T>(b), N,
                                     C, L, static_cast<T>(eps));
}

void bn_fwd_eval(bool dbl, Addr y, Addr stats, Addr x, Addr w, Addr b, Addr rm, Addr rv, int64_t N,
                 int64_t C, int64_t L, double eps) {
  check_sizes("batch_norm", N, C, L);
  if (!(eps >= 0)) fail("batch_norm: eps must be >= 0, got ", eps);
  (dbl ? bn_fwd_eval_t<double> : bn_fwd_eval_t<float>)(y, stats, x, w, b, rm, rv, N, C, L, eps);
}

template <typename T>
void bn_bwd_t(bool train, Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr stats, Addr w, int64_t N,
              int64_t C, int64_t L) {
  const T* mean = p<const T>(stats);
  nb::gil_scoped_release unlocked;
  (train ? normlab::batchnorm_backward_train<T>
         : normlab::batchnorm_backward_eval<T>)(p<T>(dx), p<T>(dw), p<T>(db), p<const T>(dy),
                                                p<const T>(x), mean, mean + C, p<const T>(w), N, C,
                                                L);
}

void bn_bwd(bool dbl, bool train, Addr dx, Addr dw, Addr db, Addr dy, Addr x, Addr stats, Addr w,
            int64_t N, int64_t C, int64_t L) {
  check_sizes("batch_norm_backward", N, C, L);
  if (N * L == 0 || C == 0 || (!dx && !dw && !db)) return;
  (dbl ? bn_bwd_t<double> : bn_bwd_t<float>)(train, dx, dw, db, dy, x, stats, w, N, C, L);
}

}  // namespace

void add_raw(nb::module_& m) {
  m.def("raw_layer_norm", &ln_fwd, "dbl"_a, "y"_a, "mean"_a, "rstd"_a, "x"_a, "w"_a, "b"_a, "N"_a,
        "D"_a, "eps"_a);
  m.def("raw_layer_norm_backward", &ln_bwd, "dbl"_a, "dx"_a, "dw"_a, "db"_a, "dy"_a, "x"_a,
        "mean"_a, "rstd"_a, "w"_a, "N"_a, "D"_a);
  m.def("raw_rms_norm", &rms_fwd, "dbl"_a, "y"_a, "rstd"_a, "x"_a, "w"_a, "N"_a, "D"_a, "eps"_a);
  m.def("raw_rms_norm_backward", &rms_bwd, "dbl"_a, "dx"_a, "dw"_a, "dy"_a, "x"_a, "rstd"_a, "w"_a,
        "N"_a, "D"_a);
  m.def("raw_group_norm", &gn_fwd, "dbl"_a, "y"_a, "mean"_a, "rstd"_a, "x"_a, "w"_a, "b"_a, "N"_a,
        "C"_a, "S"_a, "G"_a, "eps"_a);
  m.def("raw_group_norm_backward", &gn_bwd, "dbl"_a, "dx"_a, "dw"_a, "db"_a, "dy"_a, "x"_a,
        "mean"_a, "rstd"_a, "w"_a, "N"_a, "C"_a, "S"_a, "G"_a);
  m.def("raw_batch_norm_train", &bn_fwd_train, "dbl"_a, "y"_a, "stats"_a, "x"_a, "w"_a, "b"_a,
        "rm"_a, "rv"_a, "N"_a, "C"_a, "L"_a, "momentum"_a, "eps"_a);
  m.def("raw_batch_norm_eval", &bn_fwd_eval, "dbl"_a, "y"_a, "stats"_a, "x"_a, "w"_a, "b"_a, "rm"_a,
        "rv"_a, "N"_a, "C"_a, "L"_a, "eps"_a);
  m.def("raw_batch_norm_backward", &bn_bwd, "dbl"_a, "train"_a, "dx"_a, "dw"_a, "db"_a, "dy"_a,
        "x"_a, "stats"_a, "w"_a, "N"_a, "C"_a, "L"_a);
}
