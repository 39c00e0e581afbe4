// Issue "Correctness and compatibility", items 3 and 4: weight norms that
// neither overflow nor underflow (every norm goes through
// src/kernels/vector_norm.hpp), and WeightNormLinear's dim=1 and Rng-free
// constructor. PyTorch's values for the issue's case (float64; float32
// PyTorch itself overflows to y = 0): y = 8, dg = 4, dv = [-6e-20, 6, -8e-40].
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/vector_norm.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/rng.hpp"

namespace normlab {
namespace {

template <typename T>
void expect_rel(double got, double want, double tol, const char* what) {
  EXPECT_LE(std::abs(got - want), tol * std::abs(want))
      << what << ": got " << got << ", want " << want;
}

// wnlinear(3 -> 1), v = [1e20, 1, 1], g = 2, x = [1, 3e20, 0], through every dim
// whose norm covers the row (0, none; dim=1 has one norm per column).
template <typename T>
void issue_case(WeightNormDim dim, bool relu) {
  WeightNormLinear<T> l(3, 1, false, dim);
  if (relu) {
    ASSERT_EQ(l.fuse_relu(true), dim == WeightNormDim::Rows);
  }
  l.weight_v[0] = T(1e20), l.weight_v[1] = 1, l.weight_v[2] = 1;
  l.weight_g[0] = 2;
  Tensor<T> x({1, 3});
  x[0] = 1, x[1] = T(3e20), x[2] = 0;
  const Tensor<T>& y = l.forward(x);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  expect_rel<T>(y[0], 8.0, tol, "y");
  l.dweight_g.fill(0), l.dweight_v.fill(0);
  Tensor<T> dy({1, 1}, T(1));
  const Tensor<T>& dx = l.backward(dy);
  expect_rel<T>(l.dweight_g[0], 4.0, tol, "dg");
  expect_rel<T>(l.dweight_v[0], -6e-20, tol, "dv[0]");
  expect_rel<T>(l.dweight_v[1], 6.0, tol, "dv[1]");
  // -8e-40: a float subnormal (1.4e-45 steps); double: full precision.
  EXPECT_NEAR(l.dweight_v[2], -8e-40, (std::is_same_v<T, float> ? 3e-45 : 1e-52));
  // dx = dy w = g v / ||v|| = [2, 2e-20, 2e-20].
  expect_rel<T>(dx[0], 2.0, tol, "dx[0]");
  expect_rel<T>(dx[1], 2e-20, tol, "dx[1]");
}

TEST(WeightNormNorms, IssueCaseRowNormAboveFloatSquares) {
  for (bool relu : {false, true}) {
    issue_case<float>(WeightNormDim::Rows, relu);
    issue_case<double>(WeightNormDim::Rows, relu);
    issue_case<float>(WeightNormDim::Whole, relu);
    issue_case<double>(WeightNormDim::Whole, relu);
  }
}

// The same row as a column (dim=1 of a (3, 1) weight) and in the notebook's layer kernels.
TEST(WeightNormNorms, ColumnNormsAboveFloatSquares) {
  const float v[3] = {1e20f, 1, 1}, g1[1] = {2}, g3[3] = {2, 2, 2};
  float w[3], norm[1];
  weightnorm_dim1_forward(w, norm, v, g1, 3, 1);
  EXPECT_FLOAT_EQ(norm[0], 1e20f);
  EXPECT_FLOAT_EQ(w[0], 2.0f);
  EXPECT_FLOAT_EQ(w[1], 2e-20f);
  weightnorm_columns_forward(w, norm, v, g3, 3, 1);
  EXPECT_FLOAT_EQ(norm[0], 1e20f);
  EXPECT_FLOAT_EQ(w[0], 2.0f);
  EXPECT_FLOAT_EQ(w[2], 2e-20f);
}

// The shared helper: float squares below 1e-23 and above 1.8e19; doubles near
// their own limits (scaled as BLAS dnrm2); zeros, infinities and NaN.
template <typename T>
double norm_of(const std::vector<T>& v) {
  return detail::norm2(v.data(), static_cast<int64_t>(v.size()));
}

TEST(WeightNormNorms, Norm2NeitherOverflowsNorUnderflows) {
  // Vectors, not arrays: GCC's loop analysis warns on constant-size ones.
  const std::vector<float> f_big = {3e38f, FLT_MAX};
  EXPECT_DOUBLE_EQ(norm_of(f_big),
                   std::hypot(static_cast<double>(f_big[0]), static_cast<double>(FLT_MAX)));
  const std::vector<float> f_small = {3e-30f, 4e-30f, 0};
  EXPECT_NEAR(norm_of(f_small), 5e-30, 1e-36);
  const std::vector<float> f_sub = {3e-45f, 4e-45f};  // subnormals: squares 1e-89, fine in double
  EXPECT_NEAR(norm_of(f_sub), std::hypot(double(f_sub[0]), double(f_sub[1])), 1e-52);
  const std::vector<double> d_big = {3e300, 4e300}, d_small = {3e-300, 4e-300};
  EXPECT_DOUBLE_EQ(norm_of(d_big), 5e300);
  EXPECT_DOUBLE_EQ(norm_of(d_small), 5e-300);
  std::vector<double> many(1000, 1e300);  // the vector loop path, scaled
  EXPECT_NEAR(norm_of(many), 1e300 * std::sqrt(1000.0), 1e286);
  const std::vector<double> zeros = {0, 0, 0};
  EXPECT_EQ(norm_of(zeros), 0.0);
  const std::vector<double> with_inf = {1, std::numeric_limits<double>::infinity()};
  EXPECT_TRUE(std::isinf(norm_of(with_inf)));
  const std::vector<double> with_nan = {1, std::nan("")};
  EXPECT_TRUE(std::isnan(norm_of(with_nan)));
  // Columns of a (2, 3) double matrix: one huge, one tiny, one ordinary.
  const double m[6] = {3e300, 3e-300, 3, 4e300, 4e-300, 4};
  double out[3], work[6];
  detail::column_norms(out, work, m, 2, 3);
  EXPECT_DOUBLE_EQ(out[0], 5e300);
  EXPECT_DOUBLE_EQ(out[1], 5e-300);
  EXPECT_DOUBLE_EQ(out[2], 5.0);
}

// Per-row norms where g / ||v|| itself overflows float (g = 1e20, ||v|| = 5e-20:
// 2e39) while w = g v / ||v|| and every result are ordinary numbers: the fused
// kernel's scale would be inf; the layer takes the batch through w instead.
// PyTorch 2.15 (float64): y = [2.2e10, 0.25], dx = [6e19, 8e19],
// dg = [2.2e-10, 1e-10], dv = [[-6.4e28, 4.8e28], [0, 4e-10]].
TEST(WeightNormNorms, FusedScaleOutOfRangeGoesThroughW) {
  for (bool relu : {false, true}) {
    WeightNormLinear<float> l(2, 2, true, WeightNormDim::Rows);
    l.fuse_relu(relu);
    l.weight_v[0] = 3e-20f, l.weight_v[1] = 4e-20f;  // row 0: ||v|| = 5e-20
    l.weight_v[2] = 1, l.weight_v[3] = 0;            // row 1: ||v|| = 1
    l.weight_g[0] = 1e20f, l.weight_g[1] = 2;
    l.bias[0] = 0.5f, l.bias[1] = 0.25f;
    Tensor<float> x({1, 2});
    x[0] = 1e-10f, x[1] = 2e-10f;
    const Tensor<float>& y = l.forward(x);
    EXPECT_FLOAT_EQ(y[0], 2.2e10f);
    EXPECT_FLOAT_EQ(y[1], 0.25f);
    l.dweight_g.fill(0), l.dweight_v.fill(0), l.dbias.fill(0);
    Tensor<float> dy({1, 2}, 1.0f);
    const Tensor<float>& dx = l.backward(dy);
    EXPECT_FLOAT_EQ(dx[0], 6e19f);
    EXPECT_FLOAT_EQ(dx[1], 8e19f);
    EXPECT_FLOAT_EQ(l.dweight_g[0], 2.2e-10f);
    EXPECT_FLOAT_EQ(l.dweight_g[1], 1e-10f);
    EXPECT_NEAR(l.dweight_v[0], -6.4e28, 6.4e28 * 1e-5);
    EXPECT_NEAR(l.dweight_v[1], 4.8e28, 4.8e28 * 1e-5);
    EXPECT_EQ(l.dweight_v[2], 0.0f);
    EXPECT_FLOAT_EQ(l.dweight_v[3], 4e-10f);
  }
}

// The Rng-free constructor: bias 0, v all ones, g its norms, so w = all ones.
TEST(WeightNormLinearInit, WithoutRngIsOnesAndItsNorms) {
  for (WeightNormDim dim : {WeightNormDim::Rows, WeightNormDim::Columns, WeightNormDim::Whole}) {
    WeightNormLinear<double> l(3, 2, true, dim);
    const Shape want_g = dim == WeightNormDim::Rows      ? Shape{2, 1}
                         : dim == WeightNormDim::Columns ? Shape{1, 3}
                                                         : Shape{};
    EXPECT_EQ(l.weight_g.shape(), want_g);
    const double norm = dim == WeightNormDim::Rows      ? std::sqrt(3.0)
                        : dim == WeightNormDim::Columns ? std::sqrt(2.0)
                                                        : std::sqrt(6.0);
    for (int64_t i = 0; i < l.weight_g.numel(); ++i) EXPECT_DOUBLE_EQ(l.weight_g[i], norm);
    for (int64_t i = 0; i < l.weight_v.numel(); ++i) EXPECT_EQ(l.weight_v[i], 1.0);
    for (int64_t i = 0; i < l.bias.numel(); ++i) EXPECT_EQ(l.bias[i], 0.0);
    Tensor<double> x({1, 3}, 1.0);
    const Tensor<double>& y = l.forward(x);
    EXPECT_NEAR(y[0], 3.0, 1e-14);  // w = ones: y = sum x
    EXPECT_NEAR(y[1], 3.0, 1e-14);
  }
  WeightNormLinear<float> plain(4, 5);  // defaults: bias, dim 0
  EXPECT_EQ(plain.name(), "WeightNormLinear(4, 5)");
  EXPECT_EQ(plain.state().size(), 3u);
}

// dim=1 in the layer: names, state shapes (PyTorch's (1, in)) and the same
// values as forming w with the kernels and multiplying.
TEST(WeightNormLinearInit, DimOneStateAndName) {
  Rng rng(5);
  WeightNormLinear<float> l(6, 4, false, WeightNormDim::Columns, rng);
  EXPECT_EQ(l.name(), "WeightNormLinear(6, 4, bias=false, dim=1)");
  const auto st = l.state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].name, "weight_g");
  EXPECT_EQ(st[0].value->shape(), (Shape{1, 6}));
  EXPECT_EQ(st[1].name, "weight_v");
  EXPECT_FALSE(l.fuse_relu(true));
}

}  // namespace
}  // namespace normlab
