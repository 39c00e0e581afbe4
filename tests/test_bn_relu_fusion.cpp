// BatchNorm1d/2d with the following ReLU fused in (issue 11, part 3): the
// batchnorm_relu_* kernels apply the ReLU as they write y and mask dy with
// the fused output in the backward's sweeps. They must give the unfused
// kernels' results (BatchNorm, then relu_forward; relu_backward, then
// BatchNorm's backward) bit for bit, on the numerics edge inputs too (the
// fallbacks to exact channels and rows), equal the ref:: twin within float
// rounding, pass the gradient check in double in every option, and the cnn
// preset must compute the same bits fused or not.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

using namespace normlab;

namespace {

std::vector<float> values(const Tensor<float>& t) {
  return std::vector<float>(t.data(), t.data() + t.numel());
}

// Bitwise equality that also holds for NaN (same bits) and tells where.
void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b,
                      const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool same = (std::isnan(a[i]) && std::isnan(b[i])) || a[i] == b[i];
    if (!same || std::signbit(a[i]) != std::signbit(b[i])) {
      ADD_FAILURE() << what << " differs at " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
  }
}

struct Case {
  const char* name;
  int64_t N, C, L;
  double mean, spread;  // x = mean + spread * U(-1, 1)
  float eps;
  bool constant;  // every value of a channel equal
};

// The inputs of tests/test_numerics_edges.cpp and test_numerics_folding.cpp
// that matter to BatchNorm: large means, constant channels, huge and tiny eps,
// values near float overflow; (N, C) rows and (N, C, L) segments.
const Case kCases[] = {
    {"rows", 64, 24, 1, 0.0, 1.0, 1e-5f, false},
    {"segments", 8, 5, 49, 0.0, 1.0, 1e-5f, false},
    {"rows_mean1e4", 128, 16, 1, 1e4, 1e-2, 1e-5f, false},
    {"segments_mean1e4", 16, 4, 37, 1e4, 1e-2, 1e-5f, false},
    {"rows_constant", 32, 8, 1, 3.0, 0.0, 1e-5f, true},
    {"segments_constant", 4, 3, 25, -2.0, 0.0, 1e-5f, true},
    {"rows_huge_eps", 32, 8, 1, 0.0, 1.0, 1e30f, false},
    {"segments_tiny_eps", 6, 3, 20, 0.0, 1e-20, 1e-38f, false},
    {"rows_near_overflow", 16, 8, 1, 0.0, 3e38, 1e-5f, false},
    {"segments_near_overflow", 4, 3, 33, 0.0, 3e38, 1e-5f, false},
};

struct Buffers {
  std::vector<float> x, dy, gamma, beta, y, mean, rstd, var, dx, dg, db;
};

Buffers make(const Case& k, uint64_t seed) {
  const size_t n = static_cast<size_t>(k.N * k.C * k.L), c = static_cast<size_t>(k.C);
  Buffers b{std::vector<float>(n), std::vector<float>(n), std::vector<float>(c),
            std::vector<float>(c), std::vector<float>(n), std::vector<float>(c),
            std::vector<float>(c), std::vector<float>(c), std::vector<float>(n),
            std::vector<float>(c), std::vector<float>(c)};
  Rng rng(seed);
  rng.fill_uniform(b.x.data(), static_cast<int64_t>(n), -1.0, 1.0);
  for (auto& v : b.x) v = static_cast<float>(k.mean + (k.constant ? 0.0 : k.spread * v));
  rng.fill_uniform(b.dy.data(), static_cast<int64_t>(n), -1.0, 1.0);
  rng.fill_uniform(b.gamma.data(), k.C, 0.5, 1.5);
  rng.fill_uniform(b.beta.data(), k.C, -0.5, 0.5);
  return b;
}

// The fused kernels against BatchNorm's followed by the ReLU's (train and
// eval, forward and backward, with and without gamma/beta), bit for bit.
void check_case(const Case& k, bool affine, bool train) {
  const std::string what =
      std::string(k.name) + (affine ? " affine" : "") + (train ? " train" : " eval");
  Buffers u = make(k, 7), f = make(k, 7);
  const int64_t n = k.N * k.C * k.L;
  const float* g = affine ? u.gamma.data() : nullptr;
  const float* be = affine ? u.beta.data() : nullptr;
  if (train) {
    batchnorm_forward_train(u.y.data(), u.mean.data(), u.rstd.data(), u.var.data(), u.x.data(), g,
                            be, k.N, k.C, k.L, k.eps);
    relu_forward(u.y.data(), u.y.data(), n);
    batchnorm_relu_forward_train(f.y.data(), f.mean.data(), f.rstd.data(), f.var.data(), f.x.data(),
                                 g, be, k.N, k.C, k.L, k.eps);
  } else {
    for (int64_t c = 0; c < k.C; ++c) {  // running statistics near the data's
      u.mean[c] = f.mean[c] = static_cast<float>(k.mean);
      u.var[c] = f.var[c] = static_cast<float>(k.spread * k.spread / 3 + 0.5);
      u.rstd[c] = f.rstd[c] = 1 / std::sqrt(u.var[c] + k.eps);
    }
    batchnorm_forward_eval(u.y.data(), u.x.data(), u.mean.data(), u.var.data(), g, be, k.N, k.C,
                           k.L, k.eps);
    relu_forward(u.y.data(), u.y.data(), n);
    batchnorm_relu_forward_eval(f.y.data(), f.x.data(), f.mean.data(), f.var.data(), g, be, k.N,
                                k.C, k.L, k.eps);
  }
  expect_same_bits(u.y, f.y, what + " y");
  expect_same_bits(u.mean, f.mean, what + " mean");
  expect_same_bits(u.rstd, f.rstd, what + " rstd");
  std::vector<float> masked(static_cast<size_t>(n));
  relu_backward(masked.data(), u.dy.data(), u.y.data(), n);
  float* dg = affine ? u.dg.data() : nullptr;
  float* db = affine ? u.db.data() : nullptr;
  (train ? batchnorm_backward_train<float>
         : batchnorm_backward_eval<float>)(u.dx.data(), dg, db, masked.data(), u.x.data(),
                                           u.mean.data(), u.rstd.data(), g, k.N, k.C, k.L);
  batchnorm_relu_backward(train, f.dx.data(), affine ? f.dg.data() : nullptr,
                          affine ? f.db.data() : nullptr, f.dy.data(), f.y.data(), f.x.data(),
                          f.mean.data(), f.rstd.data(), g, k.N, k.C, k.L);
  expect_same_bits(u.dx, f.dx, what + " dx");
  expect_same_bits(u.dg, f.dg, what + " dgamma");
  expect_same_bits(u.db, f.db, what + " dbeta");

  // And the ref:: twin (BatchNorm in double, then the ReLU) within float
  // rounding, where the outputs are finite.
  Buffers r = make(k, 7);
  if (train)
    ref::batchnorm_relu_forward_train(r.y.data(), r.mean.data(), r.rstd.data(), r.var.data(),
                                      r.x.data(), g, be, k.N, k.C, k.L, k.eps);
  else
    ref::batchnorm_relu_forward_eval(r.y.data(), r.x.data(), f.mean.data(), f.var.data(), g, be,
                                     k.N, k.C, k.L, k.eps);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(r.y[i])) continue;
    EXPECT_NEAR(f.y[i], r.y[i], 1e-4 * (1 + std::abs(r.y[i]))) << what << " y at " << i;
    EXPECT_GE(f.y[i], 0.0f) << what;
  }
}

}  // namespace

TEST(BnReluFusion, KernelsGiveTheUnfusedBitsOnEdgeInputs) {
  for (int threads : {1, 2}) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    for (const Case& k : kCases)
      for (bool affine : {true, false})
        for (bool train : {true, false}) check_case(k, affine, train);
    omp_set_num_threads(saved);
  }
}

TEST(BnReluFusion, NanAndInfPropagateAsTheUnfusedPair) {
  // A NaN in x makes its channel's statistics NaN: relu keeps NaN outputs and
  // NaN outputs pass dy, as PyTorch's relu and threshold_backward do.
  for (int64_t L : {int64_t{1}, int64_t{9}}) {
    BatchNorm1d<float> plain(3), fused(3);
    Sequential<float> a, b;
    a.add(std::make_unique<BatchNorm1d<float>>(3));
    a.add(std::make_unique<ReLU<float>>());
    b.add(std::make_unique<BatchNorm1d<float>>(3));
    b.add(std::make_unique<ReLU<float>>());
    ASSERT_EQ(b.fuse_relus(), 1);
    Tensor<float> x(L == 1 ? Shape{4, 3} : Shape{4, 3, L}), dy(x.shape());
    Rng(3).fill_uniform(x.data(), x.numel(), -1.0, 1.0);
    Rng(4).fill_uniform(dy.data(), dy.numel(), -1.0, 1.0);
    x[0] = std::numeric_limits<float>::quiet_NaN();
    x[1] = std::numeric_limits<float>::infinity();
    expect_same_bits(values(a.forward(x)), values(b.forward(x)), "y L=" + std::to_string(L));
    expect_same_bits(values(a.backward(dy)), values(b.backward(dy)), "dx L=" + std::to_string(L));
  }
}

// The layer fused against BatchNorm2d + ReLU over several training steps
// (running statistics), then eval, with and without affine: the same bits.
TEST(BnReluFusion, BatchNorm2dLayerFusedEqualsUnfused) {
  for (bool affine : {true, false})
    for (int threads : {1, 2}) {
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      BatchNormOptions o;
      o.affine = affine;
      Sequential<float> a, b;
      for (auto* s : {&a, &b}) {
        s->add(std::make_unique<BatchNorm2d<float>>(6, o));
        s->add(std::make_unique<ReLU<float>>());
      }
      ASSERT_EQ(b.fuse_relus(), 1);
      EXPECT_TRUE(dynamic_cast<ReLU<float>&>(b[1]).fused());
      Tensor<float> x({5, 6, 7, 9}), dy(x.shape());
      for (int step = 0; step < 4; ++step) {
        const bool train = step < 3;
        a.set_training(train);
        b.set_training(train);
        Rng(10 + step).fill_normal(x.data(), x.numel(), 0.3, 2.0);
        Rng(20 + step).fill_uniform(dy.data(), dy.numel(), -1.0, 1.0);
        a.zero_grad();
        b.zero_grad();
        const std::string at = "step " + std::to_string(step) + (affine ? " affine" : "");
        expect_same_bits(values(a.forward(x)), values(b.forward(x)), at + " y");
        expect_same_bits(values(a.backward(dy)), values(b.backward(dy)), at + " dx");
        auto sa = a.state(), sb = b.state();
        ASSERT_EQ(sa.size(), sb.size());
        for (size_t i = 0; i < sa.size(); ++i) {
          if (sa[i].value) expect_same_bits(values(*sa[i].value), values(*sb[i].value), sa[i].name);
          if (sa[i].grad)
            expect_same_bits(values(*sa[i].grad), values(*sb[i].grad), sa[i].name + " grad");
        }
      }
      omp_set_num_threads(saved);
    }
}

// The gradient check in double of the fused layer, for every option:
// BatchNorm1d on (N, C) and (N, C, L), BatchNorm2d, affine or not, with and
// without running statistics (train, then eval where there are some).
TEST(BnReluFusion, FusedLayersPassTheGradientCheck) {
  uint64_t seed = 31;
  for (bool affine : {true, false})
    for (bool track : {true, false})
      for (const Shape& in : {Shape{7, 4}, Shape{3, 4, 5}, Shape{3, 4, 3, 2}}) {
        BatchNormOptions o;
        o.affine = affine;
        o.track_running_stats = track;
        Sequential<double> s;
        if (in.size() == 4)
          s.add(std::make_unique<BatchNorm2d<double>>(4, o));
        else
          s.add(std::make_unique<BatchNorm1d<double>>(4, o));
        s.add(std::make_unique<ReLU<double>>());
        ASSERT_EQ(s.fuse_relus(), 1);
        if (affine) {  // gamma, beta away from their defaults: the ReLU cuts at -beta/gamma
          auto& bn = dynamic_cast<BatchNorm1d<double>&>(s[0]);
          Rng(seed).fill_uniform(bn.weight.data(), 4, 0.5, 1.5);
          Rng(seed + 1).fill_uniform(bn.bias.data(), 4, -0.5, 0.5);
        }
        test::GradCheckOptions opt;
        opt.both_modes = track;
        EXPECT_TRUE(test::gradients_ok(s, in, seed++, opt))
            << shape_str(in) << (affine ? " affine" : "") << (track ? " track" : "");
      }
}

// The cnn preset (BatchNorm2d + ReLU twice, BatchNorm1d + ReLU once) computes
// the same bits with its ReLUs fused as without, over a few training steps.
TEST(BnReluFusion, CnnPresetFusedEqualsUnfused) {
  Rng r1(5), r2(5);
  auto plain = build_model<float>("cnn:norm=bn", Shape{16, 784}, r1);
  auto fused = build_model<float>("cnn:norm=bn", Shape{16, 784}, r2);
  EXPECT_EQ(fused->fuse_relus(), 3);
  Tensor<float> x({16, 784}), dy({16, 10});
  for (int step = 0; step < 3; ++step) {
    Rng(40 + step).fill_uniform(x.data(), x.numel(), 0.0, 1.0);
    Rng(50 + step).fill_uniform(dy.data(), dy.numel(), -1.0, 1.0);
    plain->zero_grad();
    fused->zero_grad();
    expect_same_bits(values(plain->forward(x)), values(fused->forward(x)), "y");
    plain->backward(dy);
    fused->backward(dy);
    auto a = plain->state(), b = fused->state();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].value) expect_same_bits(values(*a[i].value), values(*b[i].value), a[i].name);
      if (a[i].grad) expect_same_bits(values(*a[i].grad), values(*b[i].grad), a[i].name + " grad");
    }
  }
}
