// normlab from another project: builds a model from a spec string, trains it
// one step on random data, then checks LayerNorm's forward and backward in
// double against their definitions. Prints what it checked; exit 0 only if
// every check holds (scripts/test-install reads the last line, "example: OK").
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>

#include "normlab/build_info.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/rng.hpp"

using normlab::Tensor;

namespace {

int failures = 0;

void check(bool ok, const char* what, double value, double bound) {
  std::printf("  %-44s %.3g (bound %.3g) %s\n", what, value, bound, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}
void check(bool ok, const char* what) {
  std::printf("  %-44s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

// A model from a spec: the state_dict keys and one forward/backward in float.
void model_from_spec() {
  const int64_t N = 16;
  normlab::Rng rng(7);
  auto model = normlab::build_model<float>("flatten, linear(32), layernorm, relu, linear(10)",
                                           {N, 1, 8, 8}, rng);
  std::printf("model: %s\n", model->name().c_str());
  std::printf("state_dict:");
  for (auto& e : model->state()) std::printf(" %s", e.name.c_str());
  std::printf("\n");

  Tensor<float> x({N, 1, 8, 8});
  rng.fill_normal(x.data(), x.numel());
  const Tensor<float>& y = model->forward(x);
  Tensor<float> dy(y.shape(), 1.0f / static_cast<float>(y.numel()));
  model->zero_grad();
  const Tensor<float>& dx = model->backward(dy);
  double ysum = 0, dxsum = 0;
  for (float v : y.span()) ysum += std::fabs(v);
  for (float v : dx.span()) dxsum += std::fabs(v);
  std::printf("forward %s -> %s, backward dx %s\n", normlab::shape_str(x.shape()).c_str(),
              normlab::shape_str(y.shape()).c_str(), normlab::shape_str(dx.shape()).c_str());
  check(y.shape() == normlab::Shape{N, 10} && std::isfinite(ysum) && ysum > 0,
        "y is (16, 10), finite, not all zero");
  check(dx.shape() == x.shape() && std::isfinite(dxsum) && dxsum > 0,
        "dx is (16, 1, 8, 8), finite, not all zero");
}

// LayerNorm(D, eps=0) in double with PyTorch's init (weight 1, bias 0): every
// output row has mean 0 and biased variance 1; the input gradient dx is
// orthogonal to 1 and to y in every row (docs/derivations.md; with eps > 0
// only nearly), and dweight = sum_n dy * y.
void layernorm_definition() {
  const int64_t N = 64, D = 100;
  normlab::Rng rng(11);
  normlab::LayerNorm<double> ln({D}, normlab::LayerNormOptions{.eps = 0});
  Tensor<double> x({N, D}), dy({N, D});
  rng.fill_normal(x.data(), x.numel(), 3.0, 2.0);
  rng.fill_normal(dy.data(), dy.numel());
  const Tensor<double>& y = ln.forward(x);
  const Tensor<double>& dx = ln.backward(dy);

  double max_mean = 0, max_var = 0, max_dx_sum = 0, max_dx_dot_y = 0, max_dw = 0;
  for (int64_t n = 0; n < N; ++n) {
    const double* yr = y.data() + n * D;
    const double* dxr = dx.data() + n * D;
    double m = 0, v = 0, s = 0, d = 0;
    for (int64_t i = 0; i < D; ++i) m += yr[i];
    m /= D;
    for (int64_t i = 0; i < D; ++i) v += (yr[i] - m) * (yr[i] - m);
    v /= D;
    for (int64_t i = 0; i < D; ++i) s += dxr[i], d += dxr[i] * yr[i];
    max_mean = std::max(max_mean, std::fabs(m));
    max_var = std::max(max_var, std::fabs(v - 1));
    max_dx_sum = std::max(max_dx_sum, std::fabs(s));
    max_dx_dot_y = std::max(max_dx_dot_y, std::fabs(d));
  }
  for (int64_t i = 0; i < D; ++i) {
    double dw = 0;
    for (int64_t n = 0; n < N; ++n) dw += dy[n * D + i] * y[n * D + i];
    max_dw = std::max(max_dw, std::fabs(ln.dweight[i] - dw));
  }
  std::printf("%s on (%lld, %lld), double:\n", ln.name().c_str(), static_cast<long long>(N),
              static_cast<long long>(D));
  check(max_mean < 1e-12, "max |row mean of y|", max_mean, 1e-12);
  check(max_var < 1e-12, "max |row variance of y - 1|", max_var, 1e-12);
  check(max_dx_sum < 1e-12, "max |row sum of dx|", max_dx_sum, 1e-12);
  check(max_dx_dot_y < 1e-12, "max |row dot(dx, y)|", max_dx_dot_y, 1e-12);
  check(max_dw < 1e-12, "max |dweight - sum_n dy * y|", max_dw, 1e-12);
}

}  // namespace

int main() {
  try {
    std::printf("%s\n", normlab::build_summary().c_str());
    model_from_spec();
    layernorm_definition();
  } catch (const std::exception& e) {  // normlab::Error: a message naming the layer and numbers
    std::printf("example: error: %s\n", e.what());
    return 1;
  }
  std::printf("example: %s\n", failures ? "FAILED" : "OK");
  return failures ? 1 : 0;
}
