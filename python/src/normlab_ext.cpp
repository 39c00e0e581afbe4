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

#include "normlab/build_info.hpp"
#include "normlab/kernels.hpp"

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

}  // namespace

NB_MODULE(_normlab, m) {
  m.doc() = "normlab's LayerNorm and BatchNorm kernels (use the wrappers in normlab)";
  m.def("build_summary", &normlab::build_summary);
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
}
