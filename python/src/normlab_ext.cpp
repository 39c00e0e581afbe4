// normlab._normlab: the LayerNorm and BatchNorm kernels on NumPy arrays and
// DLPack tensors (PyTorch, ...), float32 and float64, without copying inputs.
// Every array must be C-contiguous and on the CPU; outputs are new NumPy arrays
// (python/normlab/__init__.py hands torch tensors back as torch tensors). The
// kernels run without the GIL, on the OpenMP threads of the C++ library.
// Argument names and semantics: PyTorch's native_layer_norm(_backward) and
// native_batch_norm(_backward) (aten/src/ATen/native/native_functions.yaml).
// Wrong dtype/device -> TypeError, wrong shape/contiguity/values -> ValueError,
// each message naming the argument and the numbers.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "normlab/bn_family_kernels.hpp"
#include "normlab/build_info.hpp"
#include "normlab/groupnorm_kernels.hpp"
#include "normlab/kernels.hpp"
#include "normlab/rmsnorm.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using In = nb::ndarray<nb::ro, nb::device::cpu>;  // read-only view of any dtype
using InOut = nb::ndarray<nb::device::cpu>;       // written in place (running statistics)
using Shape = std::vector<int64_t>;

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

template <typename A>
Shape shape_of(const A& a) {
  Shape s(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) s[i] = static_cast<int64_t>(a.shape(i));
  return s;
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

const char* dtype_name(nb::dlpack::dtype t) {
  if (t == nb::dtype<float>()) return "float32";
  if (t == nb::dtype<double>()) return "float64";
  if (t == nb::dtype<int64_t>()) return "int64";
  if (t == nb::dtype<int32_t>()) return "int32";
  if (t.code == uint8_t(nb::dlpack::dtype_code::Float) && t.bits == 16) return "float16";
  if (t.code == uint8_t(nb::dlpack::dtype_code::Bfloat)) return "bfloat16";
  return "a non-float dtype";
}

// dtype float32/float64 equal to the first input's, C-contiguous (size-1 dims
// may have any stride, as in NumPy/PyTorch).
template <typename A>
void check_array(const char* fn, const char* arg, const A& a, nb::dlpack::dtype want) {
  if (a.dtype() != want)
    throw nb::type_error(cat(fn, ": ", arg, " has dtype ", dtype_name(a.dtype()), ", expected ",
                             dtype_name(want), " (the dtype of input)")
                             .c_str());
  if (a.size() == 0) return;  // an empty array: any strides
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect)
      throw nb::value_error(cat(fn, ": ", arg, " of shape ", shape_str(shape_of(a)),
                                " is not C-contiguous (stride ", a.stride(i), " in dim ", i,
                                ", expected ", expect,
                                "); pass np.ascontiguousarray(x) or x.contiguous()")
                                .c_str());
    expect *= static_cast<int64_t>(a.shape(i));
  }
}

nb::dlpack::dtype input_dtype(const char* fn, const In& x) {
  const auto t = x.dtype();
  if (t != nb::dtype<float>() && t != nb::dtype<double>())
    throw nb::type_error(
        cat(fn, ": input has dtype ", dtype_name(t), "; normlab computes in float32 or float64")
            .c_str());
  return t;
}

template <typename T>
const T* ptr(const std::optional<In>& a) {
  return a ? static_cast<const T*>(a->data()) : nullptr;
}

template <typename T>
using Out = nb::ndarray<nb::numpy, T>;

// A new C-contiguous NumPy array: zero-filled for the parameter gradients the
// kernels accumulate into (zeros = true), uninitialised for what they overwrite.
template <typename T>
Out<T> new_array(const Shape& shape, bool zeros = false) {
  const int64_t n = numel(shape);
  const size_t count = static_cast<size_t>(n > 0 ? n : 1);
  T* data = zeros ? new T[count]() : new T[count];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  std::vector<size_t> dims(shape.begin(), shape.end());
  return Out<T>(data, dims.size(), dims.data(), owner);
}

void check_param(const char* fn, const char* arg, const std::optional<In>& a, const Shape& want,
                 nb::dlpack::dtype dt) {
  if (!a) return;
  check_array(fn, arg, *a, dt);
  if (shape_of(*a) != want)
    throw nb::value_error(
        cat(fn, ": ", arg, " has shape ", shape_str(shape_of(*a)), ", expected ", shape_str(want))
            .c_str());
}

bool stats_overflowed(const double* mean, const double* rstd, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(mean[i]) || !(rstd[i] > 0) || !std::isfinite(rstd[i])) return true;
  return false;
}
bool stats_overflowed(const float* mean, const float* rstd, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(mean[i]) || !(rstd[i] > 0) || !std::isfinite(rstd[i])) return true;
  return false;
}

// ---- LayerNorm ----

// (N, D) from input and normalized_shape, with the checks of torch.native_layer_norm.
std::pair<int64_t, int64_t> layer_norm_sizes(const char* fn, const Shape& in, const Shape& ns) {
  if (ns.empty()) throw nb::value_error(cat(fn, ": normalized_shape must not be empty").c_str());
  for (int64_t d : ns)
    if (d <= 0)
      throw nb::value_error(
          cat(fn, ": normalized_shape ", shape_str(ns), " must have positive dims").c_str());
  if (in.size() < ns.size() || !std::equal(ns.begin(), ns.end(), in.end() - ns.size()))
    throw nb::value_error(cat(fn, ": input of shape ", shape_str(in),
                              " does not end in normalized_shape ", shape_str(ns))
                              .c_str());
  const int64_t D = numel(ns);
  return {numel(in) / D, D};
}

Shape stats_shape(const Shape& in, const Shape& ns) {  // PyTorch's: leading dims, then ones
  Shape s(in.begin(), in.end() - ns.size());
  s.resize(in.size(), 1);
  return s;
}

template <typename T>
nb::tuple layer_norm_forward_t(const In& x, const Shape& ns, const std::optional<In>& w,
                               const std::optional<In>& b, double eps) {
  const char* fn = "layer_norm";
  const Shape in = shape_of(x);
  auto [N, D] = layer_norm_sizes(fn, in, ns);
  auto out = new_array<T>(in);
  auto mean = new_array<T>(stats_shape(in, ns));
  auto rstd = new_array<T>(stats_shape(in, ns));
  if (N > 0) {
    nb::gil_scoped_release unlocked;
    const T* xp = static_cast<const T*>(x.data());
    normlab::layernorm_forward<T>(out.data(), mean.data(), rstd.data(), xp, ptr<T>(w), ptr<T>(b), N,
                                  D, static_cast<T>(eps));
    // The fast kernel's moments in T overflowed: redo exactly (src/nn/overflow_fallback.hpp).
    if (stats_overflowed(mean.data(), rstd.data(), N))
      normlab::ref::layernorm_forward<T>(out.data(), mean.data(), rstd.data(), xp, ptr<T>(w),
                                         ptr<T>(b), N, D, static_cast<T>(eps));
  }
  return nb::make_tuple(out, mean, rstd);
}

nb::tuple layer_norm_forward(const In& input, const Shape& normalized_shape,
                             const std::optional<In>& weight, const std::optional<In>& bias,
                             double eps) {
  const char* fn = "layer_norm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  layer_norm_sizes(fn, shape_of(input), normalized_shape);
  check_param(fn, "weight", weight, normalized_shape, dt);
  check_param(fn, "bias", bias, normalized_shape, dt);
  if (!(eps >= 0)) throw nb::value_error(cat(fn, ": eps must be >= 0, got ", eps).c_str());
  return dt == nb::dtype<float>()
             ? layer_norm_forward_t<float>(input, normalized_shape, weight, bias, eps)
             : layer_norm_forward_t<double>(input, normalized_shape, weight, bias, eps);
}

template <typename T>
nb::tuple layer_norm_backward_t(const In& dy, const In& x, const Shape& ns, const In& mean,
                                const In& rstd, const std::optional<In>& w,
                                const std::optional<In>& b, std::array<bool, 3> mask) {
  const Shape in = shape_of(x);
  auto [N, D] = layer_norm_sizes("layer_norm_backward", in, ns);
  nb::object dx = nb::none(), dw = nb::none(), db = nb::none();
  std::optional<Out<T>> dxa, dwa, dba;
  if (mask[0]) dxa = new_array<T>(in);
  if (mask[1] && w) dwa = new_array<T>(ns, true);
  if (mask[2] && b) dba = new_array<T>(ns, true);
  if (N > 0 && (dxa || dwa || dba)) {
    nb::gil_scoped_release unlocked;
    normlab::layernorm_backward<T>(
        dxa ? dxa->data() : nullptr, dwa ? dwa->data() : nullptr, dba ? dba->data() : nullptr,
        static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()),
        static_cast<const T*>(mean.data()), static_cast<const T*>(rstd.data()), ptr<T>(w), N, D);
  }
  if (dxa) dx = nb::cast(*dxa);
  if (dwa) dw = nb::cast(*dwa);
  if (dba) db = nb::cast(*dba);
  return nb::make_tuple(dx, dw, db);
}

nb::tuple layer_norm_backward(const In& grad_out, const In& input, const Shape& normalized_shape,
                              const In& mean, const In& rstd, const std::optional<In>& weight,
                              const std::optional<In>& bias, std::array<bool, 3> output_mask) {
  const char* fn = "layer_norm_backward";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  auto [N, D] = layer_norm_sizes(fn, in, normalized_shape);
  check_array(fn, "grad_out", grad_out, dt);
  if (shape_of(grad_out) != in)
    throw nb::value_error(cat(fn, ": grad_out has shape ", shape_str(shape_of(grad_out)),
                              ", expected the input's ", shape_str(in))
                              .c_str());
  for (auto [arg, a] : {std::pair<const char*, const In*>{"mean", &mean}, {"rstd", &rstd}}) {
    check_array(fn, arg, *a, dt);
    if (numel(shape_of(*a)) != N)
      throw nb::value_error(cat(fn, ": ", arg, " has shape ", shape_str(shape_of(*a)),
                                ", expected ", N, " values (",
                                shape_str(stats_shape(in, normalized_shape)), ")")
                                .c_str());
  }
  check_param(fn, "weight", weight, normalized_shape, dt);
  check_param(fn, "bias", bias, normalized_shape, dt);
  (void)D;
  return dt == nb::dtype<float>()
             ? layer_norm_backward_t<float>(grad_out, input, normalized_shape, mean, rstd, weight,
                                            bias, output_mask)
             : layer_norm_backward_t<double>(grad_out, input, normalized_shape, mean, rstd, weight,
                                             bias, output_mask);
}

// ---- BatchNorm: input (N, C, *) with statistics per channel over N * prod(*) values ----

struct NCL {
  int64_t N, C, L;
};

NCL batch_norm_sizes(const char* fn, const Shape& in) {
  if (in.size() < 2)
    throw nb::value_error(
        cat(fn, ": input must be (N, C) or (N, C, *), got shape ", shape_str(in)).c_str());
  int64_t L = 1;
  for (size_t i = 2; i < in.size(); ++i) L *= in[i];
  return {in[0], in[1], L};
}

template <typename T>
nb::tuple batch_norm_forward_t(const In& x, const std::optional<In>& w, const std::optional<In>& b,
                               const std::optional<InOut>& rm, const std::optional<InOut>& rv,
                               bool training, double momentum, double eps) {
  const Shape in = shape_of(x);
  const auto [N, C, L] = batch_norm_sizes("batch_norm", in);
  auto out = new_array<T>(in);
  const T* xp = static_cast<const T*>(x.data());
  if (!training) {  // running statistics; PyTorch's CPU kernel then saves nothing: (0,) arrays
    if (N * L > 0) {
      nb::gil_scoped_release unlocked;
      normlab::batchnorm_forward_eval<T>(out.data(), xp, static_cast<const T*>(rm->data()),
                                         static_cast<const T*>(rv->data()), ptr<T>(w), ptr<T>(b), N,
                                         C, L, static_cast<T>(eps));
    }
    return nb::make_tuple(out, new_array<T>({0}), new_array<T>({0}));
  }
  auto mean = new_array<T>({C}, N * L == 0);  // an empty batch: zeros, as before any data
  auto rstd = new_array<T>({C}, N * L == 0);
  if (N * L > 0) {
    nb::gil_scoped_release unlocked;
    std::vector<T> var(static_cast<size_t>(C));
    normlab::batchnorm_forward_train<T>(out.data(), mean.data(), rstd.data(), var.data(), xp,
                                        ptr<T>(w), ptr<T>(b), N, C, L, static_cast<T>(eps));
    if (stats_overflowed(mean.data(), rstd.data(), C))
      normlab::ref::batchnorm_forward_train<T>(out.data(), mean.data(), rstd.data(), var.data(), xp,
                                               ptr<T>(w), ptr<T>(b), N, C, L, static_cast<T>(eps));
    if (rm && rv) {  // as BatchNorm1d: in double, the unbiased variance into running_var
      T* m = static_cast<T*>(rm->data());
      T* v = static_cast<T*>(rv->data());
      const double f = momentum;
      const double unbias = static_cast<double>(N * L) / static_cast<double>(N * L - 1);
      for (int64_t c = 0; c < C; ++c) {
        m[c] = static_cast<T>((1 - f) * m[c] + f * mean.data()[c]);
        v[c] = static_cast<T>((1 - f) * v[c] + f * var[c] * unbias);
      }
    }
  }
  return nb::make_tuple(out, mean, rstd);
}

nb::tuple batch_norm_forward(const In& input, const std::optional<In>& weight,
                             const std::optional<In>& bias,
                             const std::optional<InOut>& running_mean,
                             const std::optional<InOut>& running_var, bool training,
                             double momentum, double eps) {
  const char* fn = "batch_norm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  const auto [N, C, L] = batch_norm_sizes(fn, in);
  check_param(fn, "weight", weight, {C}, dt);
  check_param(fn, "bias", bias, {C}, dt);
  for (auto [arg, a] :
       {std::pair<const char*, const std::optional<InOut>*>{"running_mean", &running_mean},
        {"running_var", &running_var}}) {
    if (!*a) continue;
    check_array(fn, arg, **a, dt);
    if (shape_of(**a) != Shape{C})
      throw nb::value_error(cat(fn, ": ", arg, " has shape ", shape_str(shape_of(**a)),
                                ", expected ", shape_str({C}), " (the input's channels)")
                                .c_str());
  }
  if (running_mean.has_value() != running_var.has_value())
    throw nb::value_error(
        cat(fn, ": running_mean and running_var must both be given or both be None").c_str());
  if (!training && !running_mean)
    throw nb::value_error(
        cat(fn, ": training=False needs running_mean and running_var (or use training=True)")
            .c_str());
  if (training && N * L == 1)
    throw nb::value_error(cat(fn,
                              ": expected more than 1 value per channel when training, got "
                              "input shape ",
                              shape_str(in))
                              .c_str());
  if (training && !(eps > 0))
    throw nb::value_error(
        cat(fn, ": eps must be positive when normalizing with batch statistics, got ", eps)
            .c_str());
  if (!(eps >= 0)) throw nb::value_error(cat(fn, ": eps must be >= 0, got ", eps).c_str());
  return dt == nb::dtype<float>()
             ? batch_norm_forward_t<float>(input, weight, bias, running_mean, running_var, training,
                                           momentum, eps)
             : batch_norm_forward_t<double>(input, weight, bias, running_mean, running_var,
                                            training, momentum, eps);
}

template <typename T>
nb::tuple batch_norm_backward_t(const In& dy, const In& x, const std::optional<In>& w,
                                const std::optional<In>& rm, const std::optional<In>& rv,
                                const std::optional<In>& save_mean,
                                const std::optional<In>& save_invstd, bool train, double eps,
                                std::array<bool, 3> mask) {
  const auto [N, C, L] = batch_norm_sizes("batch_norm_backward", shape_of(x));
  std::optional<Out<T>> dxa, dwa, dba;
  if (mask[0]) dxa = new_array<T>(shape_of(x));
  if (mask[1]) dwa = new_array<T>({C}, true);
  if (mask[2]) dba = new_array<T>({C}, true);
  std::vector<T> mean(static_cast<size_t>(C)), rstd(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    if (train) {
      mean[c] = static_cast<const T*>(save_mean->data())[c];
      rstd[c] = static_cast<const T*>(save_invstd->data())[c];
    } else {  // PyTorch's eval backward: the running statistics
      mean[c] = static_cast<const T*>(rm->data())[c];
      rstd[c] = static_cast<T>(
          1 / std::sqrt(static_cast<double>(static_cast<const T*>(rv->data())[c]) + eps));
    }
  }
  if (N * L > 0 && (dxa || dwa || dba)) {
    nb::gil_scoped_release unlocked;
    (train ? normlab::batchnorm_backward_train<T>
           : normlab::batchnorm_backward_eval<T>)(dxa ? dxa->data() : nullptr,
                                                  dwa ? dwa->data() : nullptr,
                                                  dba ? dba->data() : nullptr,
                                                  static_cast<const T*>(dy.data()),
                                                  static_cast<const T*>(x.data()), mean.data(),
                                                  rstd.data(), ptr<T>(w), N, C, L);
  }
  nb::object dx = nb::none(), dw = nb::none(), db = nb::none();
  if (dxa) dx = nb::cast(*dxa);
  if (dwa) dw = nb::cast(*dwa);
  if (dba) db = nb::cast(*dba);
  return nb::make_tuple(dx, dw, db);
}

nb::tuple batch_norm_backward(const In& grad_out, const In& input, const std::optional<In>& weight,
                              const std::optional<In>& running_mean,
                              const std::optional<In>& running_var,
                              const std::optional<In>& save_mean,
                              const std::optional<In>& save_invstd, bool train, double eps,
                              std::array<bool, 3> output_mask) {
  const char* fn = "batch_norm_backward";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  const auto [N, C, L] = batch_norm_sizes(fn, in);
  check_array(fn, "grad_out", grad_out, dt);
  if (shape_of(grad_out) != in)
    throw nb::value_error(cat(fn, ": grad_out has shape ", shape_str(shape_of(grad_out)),
                              ", expected the input's ", shape_str(in))
                              .c_str());
  check_param(fn, "weight", weight, {C}, dt);
  if (train) {
    if (!save_mean || !save_invstd)
      throw nb::value_error(
          cat(fn, ": train=True needs save_mean and save_invstd from batch_norm's forward")
              .c_str());
    check_param(fn, "save_mean", save_mean, {C}, dt);
    check_param(fn, "save_invstd", save_invstd, {C}, dt);
  } else {
    if (!running_mean || !running_var)
      throw nb::value_error(cat(fn, ": train=False needs running_mean and running_var").c_str());
    check_param(fn, "running_mean", running_mean, {C}, dt);
    check_param(fn, "running_var", running_var, {C}, dt);
  }
  (void)N;
  (void)L;
  return dt == nb::dtype<float>()
             ? batch_norm_backward_t<float>(grad_out, input, weight, running_mean, running_var,
                                            save_mean, save_invstd, train, eps, output_mask)
             : batch_norm_backward_t<double>(grad_out, input, weight, running_mean, running_var,
                                             save_mean, save_invstd, train, eps, output_mask);
}

// ---- RMSNorm: torch.nn.functional.rms_norm; rstd (leading dims, then ones) ----

template <typename T>
nb::tuple rms_norm_forward_t(const In& x, const Shape& ns, const std::optional<In>& w, double eps) {
  const Shape in = shape_of(x);
  auto [N, D] = layer_norm_sizes("rms_norm", in, ns);
  auto out = new_array<T>(in);
  auto rstd = new_array<T>(stats_shape(in, ns));
  if (N > 0) {
    nb::gil_scoped_release unlocked;  // sums of squares in double: no overflow fallback needed
    normlab::rmsnorm_forward<T>(out.data(), rstd.data(), static_cast<const T*>(x.data()), ptr<T>(w),
                                N, D, static_cast<T>(eps));
  }
  return nb::make_tuple(out, rstd);
}

nb::tuple rms_norm_forward(const In& input, const Shape& normalized_shape,
                           const std::optional<In>& weight, double eps) {
  const char* fn = "rms_norm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  layer_norm_sizes(fn, shape_of(input), normalized_shape);
  check_param(fn, "weight", weight, normalized_shape, dt);
  if (!(eps >= 0)) throw nb::value_error(cat(fn, ": eps must be >= 0, got ", eps).c_str());
  return dt == nb::dtype<float>()
             ? rms_norm_forward_t<float>(input, normalized_shape, weight, eps)
             : rms_norm_forward_t<double>(input, normalized_shape, weight, eps);
}

template <typename T>
nb::tuple rms_norm_backward_t(const In& dy, const In& x, const Shape& ns, const In& rstd,
                              const std::optional<In>& w, std::array<bool, 2> mask) {
  const Shape in = shape_of(x);
  auto [N, D] = layer_norm_sizes("rms_norm_backward", in, ns);
  std::optional<Out<T>> dxa, dwa;
  if (mask[0]) dxa = new_array<T>(in);
  if (mask[1] && w) dwa = new_array<T>(ns, true);
  if (N > 0 && (dxa || dwa)) {
    nb::gil_scoped_release unlocked;
    normlab::rmsnorm_backward<T>(dxa ? dxa->data() : nullptr, dwa ? dwa->data() : nullptr,
                                 static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()),
                                 static_cast<const T*>(rstd.data()), ptr<T>(w), N, D);
  }
  nb::object dx = nb::none(), dw = nb::none();
  if (dxa) dx = nb::cast(*dxa);
  if (dwa) dw = nb::cast(*dwa);
  return nb::make_tuple(dx, dw);
}

void check_grad_out(const char* fn, const In& grad_out, const Shape& in, nb::dlpack::dtype dt) {
  check_array(fn, "grad_out", grad_out, dt);
  if (shape_of(grad_out) != in)
    throw nb::value_error(cat(fn, ": grad_out has shape ", shape_str(shape_of(grad_out)),
                              ", expected the input's ", shape_str(in))
                              .c_str());
}

void check_stats(const char* fn, const char* arg, const In& a, int64_t count, const Shape& want,
                 nb::dlpack::dtype dt) {
  check_array(fn, arg, a, dt);
  if (numel(shape_of(a)) != count)
    throw nb::value_error(cat(fn, ": ", arg, " has shape ", shape_str(shape_of(a)), ", expected ",
                              count, " values (", shape_str(want), ")")
                              .c_str());
}

nb::tuple rms_norm_backward(const In& grad_out, const In& input, const Shape& normalized_shape,
                            const In& rstd, const std::optional<In>& weight,
                            std::array<bool, 2> output_mask) {
  const char* fn = "rms_norm_backward";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  auto [N, D] = layer_norm_sizes(fn, in, normalized_shape);
  check_grad_out(fn, grad_out, in, dt);
  check_stats(fn, "rstd", rstd, N, stats_shape(in, normalized_shape), dt);
  check_param(fn, "weight", weight, normalized_shape, dt);
  (void)D;
  return dt == nb::dtype<float>() ? rms_norm_backward_t<float>(grad_out, input, normalized_shape,
                                                               rstd, weight, output_mask)
                                  : rms_norm_backward_t<double>(grad_out, input, normalized_shape,
                                                                rstd, weight, output_mask);
}

// ---- GroupNorm: torch.native_group_norm(input, weight, bias, N, C, HxW, group, eps) ----

void group_norm_check(const char* fn, const Shape& in, int64_t N, int64_t C, int64_t HxW,
                      int64_t group) {
  if (in.size() < 2)
    throw nb::value_error(cat(fn, ": input must be (N, C, *), got shape ", shape_str(in)).c_str());
  if (N < 0 || C <= 0 || HxW < 0 || in[0] != N || in[1] != C || numel(in) != N * C * HxW)
    throw nb::value_error(
        cat(fn, ": input of shape ", shape_str(in), " is not N=", N, ", C=", C, ", HxW=", HxW)
            .c_str());
  if (group <= 0 || C % group != 0)
    throw nb::value_error(
        cat(fn, ": num_groups ", group, " must be positive and divide the number of channels ", C)
            .c_str());
}

template <typename T>
nb::tuple group_norm_forward_t(const In& x, const std::optional<In>& w, const std::optional<In>& b,
                               int64_t N, int64_t C, int64_t S, int64_t G, double eps) {
  auto out = new_array<T>(shape_of(x));
  auto mean = new_array<T>({N, G}, N * S == 0);
  auto rstd = new_array<T>({N, G}, N * S == 0);
  if (N * S > 0) {
    nb::gil_scoped_release unlocked;
    const T* xp = static_cast<const T*>(x.data());
    normlab::groupnorm_forward<T>(out.data(), mean.data(), rstd.data(), nullptr, xp, ptr<T>(w),
                                  ptr<T>(b), N, C, S, G, static_cast<T>(eps));
    if (stats_overflowed(mean.data(), rstd.data(), N * G))
      normlab::ref::groupnorm_forward<T>(out.data(), mean.data(), rstd.data(), nullptr, xp,
                                         ptr<T>(w), ptr<T>(b), N, C, S, G, static_cast<T>(eps));
  }
  return nb::make_tuple(out, mean, rstd);
}

nb::tuple group_norm_forward(const In& input, const std::optional<In>& weight,
                             const std::optional<In>& bias, int64_t N, int64_t C, int64_t HxW,
                             int64_t group, double eps) {
  const char* fn = "group_norm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  group_norm_check(fn, shape_of(input), N, C, HxW, group);
  check_param(fn, "weight", weight, {C}, dt);
  check_param(fn, "bias", bias, {C}, dt);
  if (!(eps > 0)) throw nb::value_error(cat(fn, ": eps must be positive, got ", eps).c_str());
  return dt == nb::dtype<float>()
             ? group_norm_forward_t<float>(input, weight, bias, N, C, HxW, group, eps)
             : group_norm_forward_t<double>(input, weight, bias, N, C, HxW, group, eps);
}

template <typename T>
nb::tuple group_norm_backward_t(const In& dy, const In& x, const In& mean, const In& rstd,
                                const std::optional<In>& w, int64_t N, int64_t C, int64_t S,
                                int64_t G, std::array<bool, 3> mask) {
  std::optional<Out<T>> dxa, dwa, dba;
  if (mask[0]) dxa = new_array<T>(shape_of(x));
  if (mask[1]) dwa = new_array<T>({C}, true);
  if (mask[2]) dba = new_array<T>({C}, true);
  if (N * S > 0 && (dxa || dwa || dba)) {
    nb::gil_scoped_release unlocked;
    normlab::groupnorm_backward<T>(dxa ? dxa->data() : nullptr, dwa ? dwa->data() : nullptr,
                                   dba ? dba->data() : nullptr, static_cast<const T*>(dy.data()),
                                   static_cast<const T*>(x.data()),
                                   static_cast<const T*>(mean.data()),
                                   static_cast<const T*>(rstd.data()), ptr<T>(w), N, C, S, G);
  }
  nb::object dx = nb::none(), dw = nb::none(), db = nb::none();
  if (dxa) dx = nb::cast(*dxa);
  if (dwa) dw = nb::cast(*dwa);
  if (dba) db = nb::cast(*dba);
  return nb::make_tuple(dx, dw, db);
}

nb::tuple group_norm_backward(const In& grad_out, const In& input, const In& mean, const In& rstd,
                              const std::optional<In>& weight, int64_t N, int64_t C, int64_t HxW,
                              int64_t group, std::array<bool, 3> output_mask) {
  const char* fn = "group_norm_backward";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  group_norm_check(fn, in, N, C, HxW, group);
  check_grad_out(fn, grad_out, in, dt);
  check_stats(fn, "mean", mean, N * group, {N, group}, dt);
  check_stats(fn, "rstd", rstd, N * group, {N, group}, dt);
  check_param(fn, "weight", weight, {C}, dt);
  return dt == nb::dtype<float>()
             ? group_norm_backward_t<float>(grad_out, input, mean, rstd, weight, N, C, HxW, group,
                                            output_mask)
             : group_norm_backward_t<double>(grad_out, input, mean, rstd, weight, N, C, HxW, group,
                                             output_mask);
}

// ---- WeightNorm: torch._weight_norm_interface(v, g, dim) -> (w, norms) ----
// dim 0: one norm per v[i] (g, norms of shape (O, 1, ..., 1)); dim = the last:
// one per v[..., j] (shape (1, ..., 1, K)); dim -1: one over all of v (as
// torch._weight_norm and nn.utils.weight_norm(dim=None); g a scalar or (1,)).

enum class WnMode { rows, columns, whole };

struct WnPlan {
  WnMode mode;
  int64_t O, I;
  Shape norm_shape;
};

WnPlan weight_norm_plan(const char* fn, const Shape& v, int64_t dim) {
  const int64_t nd = static_cast<int64_t>(v.size());
  if (nd == 0) throw nb::value_error(cat(fn, ": v must have at least one dim").c_str());
  if (dim == -1) return {WnMode::whole, 1, numel(v), Shape{}};
  if (dim != 0 && dim != nd - 1)
    throw nb::value_error(cat(fn, ": dim ", dim, " for v of shape ", shape_str(v),
                              ": normlab supports dim 0, the last dim (", nd - 1,
                              ") or -1 (the whole tensor)")
                              .c_str());
  Shape ns(v.size(), 1);
  ns[static_cast<size_t>(dim)] = v[static_cast<size_t>(dim)];
  if (dim == 0) return {WnMode::rows, v[0], numel(v) / std::max<int64_t>(v[0], 1), ns};
  return {WnMode::columns, numel(v) / std::max<int64_t>(v.back(), 1), v.back(), ns};
}

void check_g(const char* fn, const In& g, const WnPlan& p, nb::dlpack::dtype dt) {
  check_array(fn, "g", g, dt);
  const int64_t want = p.mode == WnMode::whole ? 1 : numel(p.norm_shape);
  if (numel(shape_of(g)) != want)
    throw nb::value_error(cat(fn, ": g has shape ", shape_str(shape_of(g)), ", expected ", want,
                              " values (", shape_str(p.norm_shape), ")")
                              .c_str());
}

template <typename T>
nb::tuple weight_norm_forward_t(const In& v, const In& g, const WnPlan& p) {
  auto w = new_array<T>(shape_of(v));
  auto norm = new_array<T>(p.norm_shape);
  {
    nb::gil_scoped_release unlocked;
    const T* vp = static_cast<const T*>(v.data());
    const T* gp = static_cast<const T*>(g.data());
    if (p.mode == WnMode::columns)
      normlab::weightnorm_dim1_forward<T>(w.data(), norm.data(), vp, gp, p.O, p.I);
    else
      normlab::weightnorm_forward<T>(w.data(), norm.data(), vp, gp, p.O, p.I,
                                     p.mode == WnMode::rows);
  }
  return nb::make_tuple(w, norm);
}

nb::tuple weight_norm_forward(const In& v, const In& g, int64_t dim) {
  const char* fn = "weight_norm";
  const auto dt = input_dtype(fn, v);
  check_array(fn, "v", v, dt);
  const WnPlan p = weight_norm_plan(fn, shape_of(v), dim);
  check_g(fn, g, p, dt);
  if (numel(shape_of(v)) == 0)
    throw nb::value_error(cat(fn, ": v of shape ", shape_str(shape_of(v)), " is empty").c_str());
  return dt == nb::dtype<float>() ? weight_norm_forward_t<float>(v, g, p)
                                  : weight_norm_forward_t<double>(v, g, p);
}

template <typename T>
nb::tuple weight_norm_backward_t(const In& dw, const In& v, const In& g, const In& norm,
                                 const WnPlan& p) {
  auto dv = new_array<T>(shape_of(v), true);
  auto dg = new_array<T>(shape_of(g), true);
  {
    nb::gil_scoped_release unlocked;
    const T* dwp = static_cast<const T*>(dw.data());
    const T* vp = static_cast<const T*>(v.data());
    const T* gp = static_cast<const T*>(g.data());
    const T* np = static_cast<const T*>(norm.data());
    if (p.mode == WnMode::columns)
      normlab::weightnorm_dim1_backward<T>(dv.data(), dg.data(), dwp, vp, gp, np, p.O, p.I);
    else
      normlab::weightnorm_backward<T>(dv.data(), dg.data(), dwp, vp, gp, np, p.O, p.I,
                                      p.mode == WnMode::rows);
  }
  return nb::make_tuple(dv, dg);
}

nb::tuple weight_norm_backward(const In& grad_w, const In& saved_v, const In& saved_g,
                               const In& saved_norms, int64_t dim) {
  const char* fn = "weight_norm_backward";
  const auto dt = input_dtype(fn, saved_v);
  check_array(fn, "saved_v", saved_v, dt);
  const Shape vs = shape_of(saved_v);
  const WnPlan p = weight_norm_plan(fn, vs, dim);
  check_g(fn, saved_g, p, dt);
  check_array(fn, "grad_w", grad_w, dt);
  if (shape_of(grad_w) != vs)
    throw nb::value_error(cat(fn, ": grad_w has shape ", shape_str(shape_of(grad_w)),
                              ", expected v's ", shape_str(vs))
                              .c_str());
  check_stats(fn, "saved_norms", saved_norms, p.mode == WnMode::whole ? 1 : numel(p.norm_shape),
              p.norm_shape, dt);
  return dt == nb::dtype<float>()
             ? weight_norm_backward_t<float>(grad_w, saved_v, saved_g, saved_norms, p)
             : weight_norm_backward_t<double>(grad_w, saved_v, saved_g, saved_norms, p);
}

// ---- The BatchNorm variants (include/normlab/bn_family.hpp), input (N, C) or (N, C, L) ----

NCL bn_variant_sizes(const char* fn, const Shape& in) {
  if (in.size() != 2 && in.size() != 3)
    throw nb::value_error(
        cat(fn, ": input must be (N, C) or (N, C, L), got shape ", shape_str(in)).c_str());
  return batch_norm_sizes(fn, in);
}

// Batch Renormalization, training: (output, mean, rstd, var, r, d), all (C,) but output.
template <typename T>
nb::tuple batch_renorm_forward_t(const In& x, const std::optional<In>& w,
                                 const std::optional<In>& b, const In& rm, const In& rv,
                                 double rmax, double dmax, double eps) {
  const auto [N, C, L] = batch_norm_sizes("batch_renorm", shape_of(x));
  auto out = new_array<T>(shape_of(x));
  auto mean = new_array<T>({C}, true), rstd = new_array<T>({C}, true),
       var = new_array<T>({C}, true), r = new_array<T>({C}, true), d = new_array<T>({C}, true);
  if (N * L > 0) {
    nb::gil_scoped_release unlocked;
    const T* xp = static_cast<const T*>(x.data());
    const T* rmp = static_cast<const T*>(rm.data());
    const T* rvp = static_cast<const T*>(rv.data());
    normlab::batchrenorm_forward_train<T>(out.data(), mean.data(), rstd.data(), var.data(),
                                          r.data(), d.data(), xp, ptr<T>(w), ptr<T>(b), rmp, rvp,
                                          rmax, dmax, N, C, L, static_cast<T>(eps));
    if (stats_overflowed(mean.data(), rstd.data(), C))
      normlab::ref::batchrenorm_forward_train<T>(out.data(), mean.data(), rstd.data(), var.data(),
                                                 r.data(), d.data(), xp, ptr<T>(w), ptr<T>(b), rmp,
                                                 rvp, rmax, dmax, N, C, L, static_cast<T>(eps));
  }
  return nb::make_tuple(out, mean, rstd, var, r, d);
}

nb::tuple batch_renorm_forward(const In& input, const std::optional<In>& weight,
                               const std::optional<In>& bias, const In& running_mean,
                               const In& running_var, double rmax, double dmax, double eps) {
  const char* fn = "batch_renorm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  const auto [N, C, L] = bn_variant_sizes(fn, in);
  check_param(fn, "weight", weight, {C}, dt);
  check_param(fn, "bias", bias, {C}, dt);
  check_param(fn, "running_mean", running_mean, {C}, dt);
  check_param(fn, "running_var", running_var, {C}, dt);
  if (N * L == 1)
    throw nb::value_error(
        cat(fn, ": expected more than 1 value per channel when training, got input shape ",
            shape_str(in))
            .c_str());
  if (!(rmax >= 1) || !(dmax >= 0) || !(eps > 0))
    throw nb::value_error(cat(fn, ": need rmax >= 1, dmax >= 0 and eps > 0, got rmax=", rmax,
                              ", dmax=", dmax, ", eps=", eps)
                              .c_str());
  return dt == nb::dtype<float>()
             ? batch_renorm_forward_t<float>(input, weight, bias, running_mean, running_var, rmax,
                                             dmax, eps)
             : batch_renorm_forward_t<double>(input, weight, bias, running_mean, running_var, rmax,
                                              dmax, eps);
}

template <typename T>
nb::tuple batch_renorm_backward_t(const In& dy, const In& x, const std::optional<In>& w,
                                  const In& mean, const In& rstd, const In& r, const In& d,
                                  std::array<bool, 3> mask) {
  const auto [N, C, L] = batch_norm_sizes("batch_renorm_backward", shape_of(x));
  std::optional<Out<T>> dxa, dwa, dba;
  if (mask[0]) dxa = new_array<T>(shape_of(x));
  if (mask[1]) dwa = new_array<T>({C}, true);
  if (mask[2]) dba = new_array<T>({C}, true);
  if (N * L > 0 && (dxa || dwa || dba)) {
    nb::gil_scoped_release unlocked;
    normlab::batchrenorm_backward_train<T>(
        dxa ? dxa->data() : nullptr, dwa ? dwa->data() : nullptr, dba ? dba->data() : nullptr,
        static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()),
        static_cast<const T*>(mean.data()), static_cast<const T*>(rstd.data()),
        static_cast<const T*>(r.data()), static_cast<const T*>(d.data()), ptr<T>(w), N, C, L);
  }
  nb::object dx = nb::none(), dw = nb::none(), db = nb::none();
  if (dxa) dx = nb::cast(*dxa);
  if (dwa) dw = nb::cast(*dwa);
  if (dba) db = nb::cast(*dba);
  return nb::make_tuple(dx, dw, db);
}

nb::tuple batch_renorm_backward(const In& grad_out, const In& input,
                                const std::optional<In>& weight, const In& save_mean,
                                const In& save_invstd, const In& r, const In& d,
                                std::array<bool, 3> output_mask) {
  const char* fn = "batch_renorm_backward";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const Shape in = shape_of(input);
  const auto [N, C, L] = bn_variant_sizes(fn, in);
  check_grad_out(fn, grad_out, in, dt);
  check_param(fn, "weight", weight, {C}, dt);
  check_param(fn, "save_mean", save_mean, {C}, dt);
  check_param(fn, "save_invstd", save_invstd, {C}, dt);
  check_param(fn, "r", r, {C}, dt);
  check_param(fn, "d", d, {C}, dt);
  (void)N;
  (void)L;
  return dt == nb::dtype<float>()
             ? batch_renorm_backward_t<float>(grad_out, input, weight, save_mean, save_invstd, r, d,
                                              output_mask)
             : batch_renorm_backward_t<double>(grad_out, input, weight, save_mean, save_invstd, r,
                                               d, output_mask);
}

// Mean-only BatchNorm: training (output, batch mean (C,)); eval with a given mean: (output, mean).
template <typename T>
nb::tuple mean_only_forward_t(const In& x, const std::optional<In>& b,
                              const std::optional<In>& mean_in, bool training) {
  const auto [N, C, L] = batch_norm_sizes("mean_only_batch_norm", shape_of(x));
  auto out = new_array<T>(shape_of(x));
  auto mean = new_array<T>({C}, true);
  if (!training) std::copy_n(static_cast<const T*>(mean_in->data()), C, mean.data());
  if (N * L > 0) {
    nb::gil_scoped_release unlocked;
    if (training)
      normlab::meanonly_batchnorm_forward_train<T>(
          out.data(), mean.data(), static_cast<const T*>(x.data()), ptr<T>(b), N, C, L);
    else
      normlab::meanonly_batchnorm_forward_eval<T>(out.data(), static_cast<const T*>(x.data()),
                                                  mean.data(), ptr<T>(b), N, C, L);
  }
  return nb::make_tuple(out, mean);
}

nb::tuple mean_only_forward(const In& input, const std::optional<In>& bias,
                            const std::optional<In>& running_mean, bool training) {
  const char* fn = "mean_only_batch_norm";
  const auto dt = input_dtype(fn, input);
  check_array(fn, "input", input, dt);
  const auto [N, C, L] = bn_variant_sizes(fn, shape_of(input));
  check_param(fn, "bias", bias, {C}, dt);
  check_param(fn, "running_mean", running_mean, {C}, dt);
  if (!training && !running_mean)
    throw nb::value_error(cat(fn, ": training=False needs running_mean").c_str());
  (void)N;
  (void)L;
  return dt == nb::dtype<float>()
             ? mean_only_forward_t<float>(input, bias, running_mean, training)
             : mean_only_forward_t<double>(input, bias, running_mean, training);
}

template <typename T>
nb::tuple mean_only_backward_t(const In& dy, bool train, bool with_bias, std::array<bool, 2> mask) {
  const auto [N, C, L] = batch_norm_sizes("mean_only_batch_norm_backward", shape_of(dy));
  std::optional<Out<T>> dxa, dba;
  if (mask[0]) dxa = new_array<T>(shape_of(dy));
  if (mask[1] && with_bias) dba = new_array<T>({C}, true);
  if (N * L > 0 && (dxa || dba)) {
    nb::gil_scoped_release unlocked;
    std::vector<T> scratch;
    T* dx = dxa ? dxa->data() : nullptr;
    if (!dx) {  // the kernel writes dx; a scratch buffer when only dbias is wanted
      scratch.resize(static_cast<size_t>(N * C * L));
      dx = scratch.data();
    }
    normlab::meanonly_batchnorm_backward<T>(train, dx, dba ? dba->data() : nullptr,
                                            static_cast<const T*>(dy.data()), N, C, L);
  }
  nb::object dx = nb::none(), db = nb::none();
  if (dxa) dx = nb::cast(*dxa);
  if (dba) db = nb::cast(*dba);
  return nb::make_tuple(dx, db);
}

nb::tuple mean_only_backward(const In& grad_out, bool train, bool with_bias,
                             std::array<bool, 2> output_mask) {
  const char* fn = "mean_only_batch_norm_backward";
  const auto dt = input_dtype(fn, grad_out);
  check_array(fn, "grad_out", grad_out, dt);
  bn_variant_sizes(fn, shape_of(grad_out));
  return dt == nb::dtype<float>()
             ? mean_only_backward_t<float>(grad_out, train, with_bias, output_mask)
             : mean_only_backward_t<double>(grad_out, train, with_bias, output_mask);
}

}  // namespace

void add_training(nb::module_& m);  // train_ext.cpp
void add_raw(nb::module_& m);       // raw_ext.cpp: normlab.torch's one-call-per-pass entry points

NB_MODULE(_normlab, m) {
  m.doc() = "normlab's normalization kernels (use the wrappers in normlab)";
  m.def("build_summary", &normlab::build_summary);
  add_training(m);
  add_raw(m);
  m.def("kernel_isa", &normlab::kernel_isa);
  m.def("layer_norm_forward", &layer_norm_forward, "input"_a, "normalized_shape"_a,
        "weight"_a.none(), "bias"_a.none(), "eps"_a);
  m.def("layer_norm_backward", &layer_norm_backward, "grad_out"_a, "input"_a, "normalized_shape"_a,
        "mean"_a, "rstd"_a, "weight"_a.none(), "bias"_a.none(), "output_mask"_a);
  m.def("batch_norm_forward", &batch_norm_forward, "input"_a, "weight"_a.none(), "bias"_a.none(),
        "running_mean"_a.none(), "running_var"_a.none(), "training"_a, "momentum"_a, "eps"_a);
  m.def("batch_norm_backward", &batch_norm_backward, "grad_out"_a, "input"_a, "weight"_a.none(),
        "running_mean"_a.none(), "running_var"_a.none(), "save_mean"_a.none(),
        "save_invstd"_a.none(), "train"_a, "eps"_a, "output_mask"_a);
  m.def("rms_norm_forward", &rms_norm_forward, "input"_a, "normalized_shape"_a, "weight"_a.none(),
        "eps"_a);
  m.def("rms_norm_backward", &rms_norm_backward, "grad_out"_a, "input"_a, "normalized_shape"_a,
        "rstd"_a, "weight"_a.none(), "output_mask"_a);
  m.def("group_norm_forward", &group_norm_forward, "input"_a, "weight"_a.none(), "bias"_a.none(),
        "N"_a, "C"_a, "HxW"_a, "group"_a, "eps"_a);
  m.def("group_norm_backward", &group_norm_backward, "grad_out"_a, "input"_a, "mean"_a, "rstd"_a,
        "weight"_a.none(), "N"_a, "C"_a, "HxW"_a, "group"_a, "output_mask"_a);
  m.def("weight_norm_forward", &weight_norm_forward, "v"_a, "g"_a, "dim"_a);
  m.def("weight_norm_backward", &weight_norm_backward, "grad_w"_a, "saved_v"_a, "saved_g"_a,
        "saved_norms"_a, "dim"_a);
  m.def("batch_renorm_forward", &batch_renorm_forward, "input"_a, "weight"_a.none(),
        "bias"_a.none(), "running_mean"_a, "running_var"_a, "rmax"_a, "dmax"_a, "eps"_a);
  m.def("batch_renorm_backward", &batch_renorm_backward, "grad_out"_a, "input"_a, "weight"_a.none(),
        "save_mean"_a, "save_invstd"_a, "r"_a, "d"_a, "output_mask"_a);
  m.def("mean_only_forward", &mean_only_forward, "input"_a, "bias"_a.none(),
        "running_mean"_a.none(), "training"_a);
  m.def("mean_only_backward", &mean_only_backward, "grad_out"_a, "train"_a, "with_bias"_a,
        "output_mask"_a);
}
