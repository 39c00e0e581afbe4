// Gradient checks of the double kernels themselves, without the layers: the default
// (fast) LayerNorm/BatchNorm entry points and their ref:: versions, at sizes that leave
// vector tails (D = 37, 130; N*L = 35), with and without gamma/beta, and the WeightNorm
// kernels. Loss = sum(G * y) with a fixed random G, as in tests/gradcheck.hpp.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gradcheck.hpp"
#include "normlab/kernels.hpp"

namespace normlab {
namespace {

using test::randn;

struct Var {
  std::string name;
  Tensor<double>* value;
  Tensor<double> analytic;
};

// Numeric gradients of loss() for every variable, against the analytic ones, with the
// same floor rule as the layer checker (1e-2 of the largest gradient of the check).
void expect_grads_ok(std::vector<Var> vars, const std::function<double()>& loss,
                     const std::string& what) {
  std::vector<Tensor<double>> numeric;
  for (auto& v : vars) numeric.push_back(test::numeric_gradient(*v.value, loss));
  const double floor = 1e-2 * test::gradient_scale(numeric);
  for (size_t i = 0; i < vars.size(); ++i) {
    const auto r = test::compare_gradients(vars[i].name, vars[i].analytic, numeric[i], floor);
    EXPECT_LE(r.max_rel_err, 1e-6) << what << ": " << r.name << " worst at " << r.worst
                                   << " analytic " << r.analytic << " numeric " << r.numeric;
  }
}

double dot(const Tensor<double>& a, const Tensor<double>& b) {
  long double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<long double>(a[i]) * b[i];
  return static_cast<double>(s);
}

// ---- LayerNorm ----
using LnFwd = void (*)(double*, double*, double*, const double*, const double*, const double*,
                       int64_t, int64_t, double);
using LnBwd = void (*)(double*, double*, double*, const double*, const double*, const double*,
                       const double*, const double*, int64_t, int64_t);

void check_layernorm(LnFwd fwd, LnBwd bwd, int64_t N, int64_t D, bool use_gamma, bool use_beta,
                     const std::string& what) {
  Tensor<double> x = randn({N, D}, 1, 0.3, 2.0), gamma = randn({D}, 2, 1.0, 0.5),
                 beta = randn({D}, 3), G = randn({N, D}, 4);
  Tensor<double> y({N, D}), mean({N}), rstd({N});
  const double* gp = use_gamma ? gamma.data() : nullptr;
  const double* bp = use_beta ? beta.data() : nullptr;
  auto loss = [&] {
    fwd(y.data(), mean.data(), rstd.data(), x.data(), gp, bp, N, D, 1e-5);
    return dot(G, y);
  };
  loss();
  Tensor<double> dx({N, D}), dgamma({D}, 0.5), dbeta({D}, -0.25);  // += onto non-zero
  bwd(dx.data(), use_gamma ? dgamma.data() : nullptr, use_beta ? dbeta.data() : nullptr, G.data(),
      x.data(), mean.data(), rstd.data(), gp, N, D);
  for (int64_t d = 0; d < D; ++d) {
    dgamma[d] -= 0.5;
    dbeta[d] += 0.25;
  }
  std::vector<Var> vars{{"x", &x, dx}};
  if (use_gamma) vars.push_back({"gamma", &gamma, dgamma});
  if (use_beta) vars.push_back({"beta", &beta, dbeta});
  expect_grads_ok(vars, loss, what);

  // dx == nullptr skips dx and leaves the parameter gradients as they were with it.
  Tensor<double> dgamma2({D}), dbeta2({D});
  loss();
  bwd(nullptr, use_gamma ? dgamma2.data() : nullptr, use_beta ? dbeta2.data() : nullptr, G.data(),
      x.data(), mean.data(), rstd.data(), gp, N, D);
  for (int64_t d = 0; d < D; ++d) {
    if (use_gamma) {
      EXPECT_NEAR(dgamma2[d], dgamma[d], 1e-12) << what;
    }
    if (use_beta) {
      EXPECT_NEAR(dbeta2[d], dbeta[d], 1e-12) << what;
    }
  }
}

TEST(GradCheckKernels, LayerNormDefaultAndRef) {
  for (int64_t D : {5, 37, 130}) {
    for (auto [g, b] : {std::pair{true, true}, {true, false}, {false, false}}) {
      const std::string cfg = "D=" + std::to_string(D) + (g ? " gamma" : "") + (b ? " beta" : "");
      check_layernorm(layernorm_forward<double>, layernorm_backward<double>, 3, D, g, b,
                      "default " + cfg);
      check_layernorm(ref::layernorm_forward<double>, ref::layernorm_backward<double>, 3, D, g, b,
                      "ref " + cfg);
    }
  }
}

// ---- BatchNorm, training (batch statistics) and eval (given statistics) ----
using BnFwdTrain = void (*)(double*, double*, double*, double*, const double*, const double*,
                            const double*, int64_t, int64_t, int64_t, double);
using BnFwdEval = void (*)(double*, const double*, const double*, const double*, const double*,
                           const double*, int64_t, int64_t, int64_t, double);
using BnBwd = void (*)(double*, double*, double*, const double*, const double*, const double*,
                       const double*, const double*, int64_t, int64_t, int64_t);

void check_batchnorm(BnFwdTrain fwd_train, BnFwdEval fwd_eval, BnBwd bwd_train, BnBwd bwd_eval,
                     int64_t N, int64_t C, int64_t L, bool affine, const std::string& what) {
  Tensor<double> x = randn({N, C, L}, 5, -0.4, 1.5), gamma = randn({C}, 6, 1.0, 0.5),
                 beta = randn({C}, 7), G = randn({N, C, L}, 8);
  Tensor<double> y({N, C, L}), mean({C}), rstd({C}), var({C});
  const double* gp = affine ? gamma.data() : nullptr;
  const double* bp = affine ? beta.data() : nullptr;
  for (bool train : {true, false}) {
    // Eval statistics: fixed "running" values, not the batch's.
    Tensor<double> run_mean = randn({C}, 9), run_var({C});
    for (int64_t c = 0; c < C; ++c) run_var[c] = 0.5 + 0.3 * c;
    auto loss = [&] {
      if (train)
        fwd_train(y.data(), mean.data(), rstd.data(), var.data(), x.data(), gp, bp, N, C, L, 1e-5);
      else
        fwd_eval(y.data(), x.data(), run_mean.data(), run_var.data(), gp, bp, N, C, L, 1e-5);
      return dot(G, y);
    };
    loss();
    if (!train)
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = run_mean[c];
        rstd[c] = 1.0 / std::sqrt(run_var[c] + 1e-5);
      }
    Tensor<double> dx({N, C, L}), dgamma({C}), dbeta({C});
    (train ? bwd_train : bwd_eval)(dx.data(), affine ? dgamma.data() : nullptr,
                                   affine ? dbeta.data() : nullptr, G.data(), x.data(), mean.data(),
                                   rstd.data(), gp, N, C, L);
    std::vector<Var> vars{{"x", &x, dx}};
    if (affine) {
      vars.push_back({"gamma", &gamma, dgamma});
      vars.push_back({"beta", &beta, dbeta});
    }
    expect_grads_ok(vars, loss, what + (train ? " train" : " eval"));
  }
}

TEST(GradCheckKernels, BatchNormDefaultAndRef) {
  for (auto [N, C, L] : {std::tuple{5, 3, 7}, {9, 4, 1}, {1, 2, 3}})
    for (bool affine : {true, false}) {
      const std::string cfg = "N=" + std::to_string(N) + " C=" + std::to_string(C) +
                              " L=" + std::to_string(L) + (affine ? " affine" : "");
      check_batchnorm(batchnorm_forward_train<double>, batchnorm_forward_eval<double>,
                      batchnorm_backward_train<double>, batchnorm_backward_eval<double>, N, C, L,
                      affine, "default " + cfg);
      check_batchnorm(ref::batchnorm_forward_train<double>, ref::batchnorm_forward_eval<double>,
                      ref::batchnorm_backward_train<double>, ref::batchnorm_backward_eval<double>,
                      N, C, L, affine, "ref " + cfg);
    }
}

// ---- WeightNorm: per row, whole, the notebook's per column, PyTorch's dim=1 ----
TEST(GradCheckKernels, WeightNorm) {
  const int64_t O = 4, I = 6;
  for (int mode = 0; mode < 4; ++mode) {
    const bool columns = mode == 2, per_row = mode == 0, dim1 = mode == 3;
    Tensor<double> v = randn({O, I}, 10), G = randn({O, I}, 11);
    Tensor<double> g =
        columns ? randn({O, I}, 12) : randn({per_row ? O : (dim1 ? I : 1)}, 12, 1.0, 0.5);
    Tensor<double> w({O, I}), norm({columns || dim1 ? I : (per_row ? O : 1)});
    auto loss = [&] {
      if (columns)
        weightnorm_columns_forward(w.data(), norm.data(), v.data(), g.data(), O, I);
      else if (dim1)
        weightnorm_dim1_forward(w.data(), norm.data(), v.data(), g.data(), O, I);
      else
        weightnorm_forward(w.data(), norm.data(), v.data(), g.data(), O, I, per_row);
      return dot(G, w);
    };
    loss();
    Tensor<double> dv({O, I}), dg(g.shape());
    if (columns)
      weightnorm_columns_backward(dv.data(), dg.data(), G.data(), v.data(), g.data(), norm.data(),
                                  O, I);
    else if (dim1)
      weightnorm_dim1_backward(dv.data(), dg.data(), G.data(), v.data(), g.data(), norm.data(), O,
                               I);
    else
      weightnorm_backward(dv.data(), dg.data(), G.data(), v.data(), g.data(), norm.data(), O, I,
                          per_row);
    expect_grads_ok({{"v", &v, dv}, {"g", &g, dg}}, loss,
                    columns ? "columns" : (dim1 ? "dim 1" : (per_row ? "per row" : "whole")));
  }
}

}  // namespace
}  // namespace normlab
