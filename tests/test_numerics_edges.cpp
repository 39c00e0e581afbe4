// LayerNorm and BatchNorm at the edges of float, against a long-double
// reference computed here from the same float inputs: rows with mean 1e4 and
// spread 1e-2, constant rows, rows of zeros, D = 1e6, eps 1e-12 and 1e3,
// BatchNorm on (N, C, L) with L = 1, and inputs near float's overflow (1e38).
// Both kernel sets are checked: the default (fast) kernels and ref::.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/rng.hpp"

namespace normlab {
namespace {

using LD = long double;

// ------------------------------------------------------------- the reference

// Groups of `count` values; value k of group g is at index(g, k). For LayerNorm
// a group is a row (gamma per position), for BatchNorm a channel (gamma per group).
struct Layout {
  int64_t groups, count;
  std::function<int64_t(int64_t, int64_t)> index;
  std::function<int64_t(int64_t, int64_t)> param;  // gamma/beta index of value k of group g
};

struct Result {
  std::vector<float> y, dx, dgamma, dbeta;
};

// Forward and backward of the normalization in long double (64-bit mantissa,
// 15-bit exponent: squares of float values cannot overflow).
struct Reference {
  std::vector<LD> y, dx, dgamma, dbeta;
  // The size of the terms each value is made of (|xhat * gamma| + |beta| for y,
  // rstd * |dy * gamma| for dx, sums of |dy * xhat| and |dy| for dgamma and dbeta):
  // errors are measured against these, so that a result that cancels to ~0
  // (dx of a row of 2 values) is judged by the rounding its terms allow.
  LD y_scale = 0, dx_scale = 0, dgamma_scale = 0, dbeta_scale = 0;
};

Reference reference(const std::vector<float>& x, const std::vector<float>& dy,
                    const std::vector<float>& gamma, const std::vector<float>& beta, float eps,
                    const Layout& L) {
  Reference r;
  r.y.assign(x.size(), 0), r.dx.assign(x.size(), 0);
  r.dgamma.assign(gamma.size(), 0), r.dbeta.assign(gamma.size(), 0);
  std::vector<LD> dgamma_terms(gamma.size(), 0), dbeta_terms(gamma.size(), 0);
  for (int64_t g = 0; g < L.groups; ++g) {
    LD m = 0, v = 0;
    for (int64_t k = 0; k < L.count; ++k) m += x[L.index(g, k)];
    m /= L.count;
    for (int64_t k = 0; k < L.count; ++k) v += (x[L.index(g, k)] - m) * (x[L.index(g, k)] - m);
    v /= L.count;
    const LD rstd = 1 / std::sqrt(v + static_cast<LD>(eps));
    LD mg = 0, mgx = 0;
    for (int64_t k = 0; k < L.count; ++k) {
      const int64_t i = L.index(g, k), p = L.param(g, k);
      const LD xhat = (x[i] - m) * rstd;
      r.y[i] = xhat * gamma[p] + beta[p];
      const LD gi = static_cast<LD>(dy[i]) * gamma[p];
      mg += gi;
      mgx += gi * xhat;
      r.dgamma[p] += dy[i] * xhat;
      r.dbeta[p] += dy[i];
      dgamma_terms[p] += std::abs(dy[i] * xhat);
      dbeta_terms[p] += std::abs(static_cast<LD>(dy[i]));
      r.y_scale = std::max(r.y_scale, std::abs(xhat * gamma[p]) + std::abs(beta[p]));
      r.dx_scale = std::max(r.dx_scale, std::abs(gi * rstd));
    }
    mg /= L.count, mgx /= L.count;
    for (int64_t k = 0; k < L.count; ++k) {
      const int64_t i = L.index(g, k), p = L.param(g, k);
      const LD xhat = (x[i] - m) * rstd;
      r.dx[i] = rstd * (static_cast<LD>(dy[i]) * gamma[p] - mg - xhat * mgx);
    }
  }
  for (size_t p = 0; p < gamma.size(); ++p) {
    r.dgamma_scale = std::max(r.dgamma_scale, dgamma_terms[p]);
    r.dbeta_scale = std::max(r.dbeta_scale, dbeta_terms[p]);
  }
  return r;
}

// ------------------------------------------------------------- the kernels

struct Kernels {
  const char* name;
  decltype(&layernorm_forward<float>) ln_fwd;
  decltype(&layernorm_backward<float>) ln_bwd;
  decltype(&batchnorm_forward_train<float>) bn_fwd;
  decltype(&batchnorm_backward_train<float>) bn_bwd;
};

const Kernels kDefault{"default", &layernorm_forward<float>, &layernorm_backward<float>,
                       &batchnorm_forward_train<float>, &batchnorm_backward_train<float>};
const Kernels kRef{"ref", &ref::layernorm_forward<float>, &ref::layernorm_backward<float>,
                   &ref::batchnorm_forward_train<float>, &ref::batchnorm_backward_train<float>};

Result run_layernorm(const Kernels& k, const std::vector<float>& x, const std::vector<float>& dy,
                     const std::vector<float>& gamma, const std::vector<float>& beta, int64_t N,
                     int64_t D, float eps) {
  Result r;
  r.y.resize(x.size()), r.dx.resize(x.size());
  r.dgamma.assign(D, 0), r.dbeta.assign(D, 0);
  std::vector<float> mean(N), rstd(N);
  k.ln_fwd(r.y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), N, D, eps);
  k.ln_bwd(r.dx.data(), r.dgamma.data(), r.dbeta.data(), dy.data(), x.data(), mean.data(),
           rstd.data(), gamma.data(), N, D);
  return r;
}

Result run_batchnorm(const Kernels& k, const std::vector<float>& x, const std::vector<float>& dy,
                     const std::vector<float>& gamma, const std::vector<float>& beta, int64_t N,
                     int64_t C, int64_t L, float eps) {
  Result r;
  r.y.resize(x.size()), r.dx.resize(x.size());
  r.dgamma.assign(C, 0), r.dbeta.assign(C, 0);
  std::vector<float> mean(C), rstd(C), var(C);
  k.bn_fwd(r.y.data(), mean.data(), rstd.data(), var.data(), x.data(), gamma.data(), beta.data(), N,
           C, L, eps);
  k.bn_bwd(r.dx.data(), r.dgamma.data(), r.dbeta.data(), dy.data(), x.data(), mean.data(),
           rstd.data(), gamma.data(), N, C, L);
  return r;
}

// Largest |got - want| over the tensor relative to the size of its terms;
// infinite if any value is not finite.
double error(const std::vector<float>& got, const std::vector<LD>& want, LD scale) {
  LD worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<LD>(got[i]) - want[i]));
  }
  return static_cast<double>(worst / std::max<LD>(scale, std::numeric_limits<LD>::min()));
}

// ------------------------------------------------------------- the cases

// n values mean + sd * N(0, 1), clipped to float's finite range.
std::vector<float> normal(int64_t n, uint64_t seed, double mean, double sd) {
  constexpr double kMax = std::numeric_limits<float>::max();
  std::vector<float> v(static_cast<size_t>(n));
  Rng rng(seed);
  for (auto& e : v) e = static_cast<float>(std::clamp(mean + sd * rng.normal(), -kMax, kMax));
  return v;
}

struct Case {
  std::string name;
  std::vector<float> x;
  float eps = 1e-5f;
  double tol = 2e-5;  // relative error allowed in y, dx, dgamma, dbeta
  // A looser bound for the default (fast) kernels where their float sums are
  // the limit (D = 1e6 built without vectorisation); 0: tol.
  double default_tol = 0;
};

void check(const Case& c, const Kernels& k, const std::string& norm, const Result& got,
           const Reference& want, double tol) {
  if (&k == &kDefault && c.default_tol > 0) tol = c.default_tol;
  SCOPED_TRACE(norm + " / " + k.name + " kernels / " + c.name);
  EXPECT_LE(error(got.y, want.y, want.y_scale), tol) << "y";
  EXPECT_LE(error(got.dx, want.dx, want.dx_scale), tol) << "dx";
  EXPECT_LE(error(got.dgamma, want.dgamma, want.dgamma_scale), tol) << "dgamma";
  EXPECT_LE(error(got.dbeta, want.dbeta, want.dbeta_scale), tol) << "dbeta";
}

// LayerNorm on N rows of D and BatchNorm on the same values seen as (N, C, L),
// with a random gamma/beta and a random upstream gradient.
void check_both(const Case& c, int64_t N, int64_t D, int64_t C, int64_t L,
                const std::vector<const Kernels*>& kernels = {&kDefault, &kRef}) {
  ASSERT_EQ(static_cast<int64_t>(c.x.size()), N * D);
  ASSERT_EQ(D, C * L);
  const std::vector<float> dy = normal(N * D, 99, 0, 1);
  {
    const std::vector<float> gamma = normal(D, 5, 1, 0.2), beta = normal(D, 6, 0, 0.5);
    const Layout lay{N, D, [D](int64_t g, int64_t k) { return g * D + k; },
                     [](int64_t, int64_t k) { return k; }};
    const Reference want = reference(c.x, dy, gamma, beta, c.eps, lay);
    for (const Kernels* k : kernels)
      check(c, *k, "LayerNorm", run_layernorm(*k, c.x, dy, gamma, beta, N, D, c.eps), want, c.tol);
  }
  {
    const std::vector<float> gamma = normal(C, 7, 1, 0.2), beta = normal(C, 8, 0, 0.5);
    const Layout lay{C, N * L,
                     [C, L](int64_t g, int64_t k) { return ((k / L) * C + g) * L + k % L; },
                     [](int64_t g, int64_t) { return g; }};
    const Reference want = reference(c.x, dy, gamma, beta, c.eps, lay);
    for (const Kernels* k : kernels)
      check(c, *k, "BatchNorm", run_batchnorm(*k, c.x, dy, gamma, beta, N, C, L, c.eps), want,
            c.tol);
  }
}

TEST(NumericsEdges, LargeMeanSmallSpread) {
  check_both({"mean 1e4, sd 1e-2", normal(64 * 96, 1, 1e4, 1e-2), 1e-5f, 2e-5}, 64, 96, 32, 3);
}

TEST(NumericsEdges, ConstantRows) {
  std::vector<float> x(16 * 40, 7.25f);
  check_both({"every value 7.25", x}, 16, 40, 8, 5);
  std::fill(x.begin(), x.end(), -3e30f);
  check_both({"every value -3e30", x}, 16, 40, 8, 5);
  // Half the rows constant (1e4), half ordinary: the constant ones must not spoil the others.
  x = normal(16 * 40, 2, 0, 1);
  for (size_t i = 0; i < x.size() / 2; ++i) x[i] = 1e4f;
  check_both({"half the rows 1e4", x}, 16, 40, 40, 1);
}

TEST(NumericsEdges, Zeros) {
  check_both({"zeros", std::vector<float>(8 * 24, 0.0f)}, 8, 24, 24, 1);
}

TEST(NumericsEdges, VeryLargeD) {
  const int64_t D = 1000000;
  // LayerNorm rows of 1e6 values (mean 3, sd 1); BatchNorm channels of 1e6 values.
  // The default kernels sum a row in float: with the vector lanes as partial
  // sums (16 with AVX-512) the error at D = 1e6 is 4e-6; compiled without
  // vectorisation (-O1) one accumulator gives 2e-4.
  check_both({"D = 1e6", normal(2 * D, 3, 3, 1), 1e-5f, 2e-5, 5e-4}, 2, D, 2, D / 2);
  // Among 1e6 pairs some are nearly equal: their spread is a few ulp of the mean,
  // the large-mean case in small: the backward must recover the exact mean.
  check_both({"1e6 rows of 2", normal(2 * D, 4, -5, 2), 1e-5f, 2e-5}, D, 2, 2, 1);
}

TEST(NumericsEdges, TinyAndHugeEps) {
  check_both({"eps 1e-12, sd 1e-3", normal(32 * 50, 5, 0.5, 1e-3), 1e-12f}, 32, 50, 50, 1);
  std::vector<float> constant(32 * 50, 2.0f);
  check_both({"eps 1e-12, constant rows", constant, 1e-12f}, 32, 50, 50, 1);
  check_both({"eps 1e3", normal(32 * 50, 6, 1, 1), 1e3f}, 32, 50, 10, 5);
  check_both({"eps 1e3, sd 1e3", normal(32 * 50, 7, 0, 1e3), 1e3f}, 32, 50, 10, 5);
}

// (N, C, 1) is (N, C): the layer gives the same numbers, bit for bit, and right ones.
TEST(NumericsEdges, BatchNormWithLengthOne) {
  const int64_t N = 12, C = 7;
  const std::vector<float> x = normal(N * C, 9, 2, 3), dy = normal(N * C, 10, 0, 1);
  Tensor<float> x2({N, C}), x3({N, C, 1}), g2({N, C}), g3({N, C, 1});
  std::copy(x.begin(), x.end(), x2.data()), std::copy(x.begin(), x.end(), x3.data());
  std::copy(dy.begin(), dy.end(), g2.data()), std::copy(dy.begin(), dy.end(), g3.data());
  BatchNorm1d<float> a(C), b(C);
  const Tensor<float> y2 = a.forward(x2), y3 = b.forward(x3);
  ASSERT_EQ(y3.shape(), (Shape{N, C, 1}));
  const Tensor<float> dx2 = a.backward(g2), dx3 = b.backward(g3);
  for (int64_t i = 0; i < N * C; ++i) {
    EXPECT_EQ(y2[i], y3[i]) << i;
    EXPECT_EQ(dx2[i], dx3[i]) << i;
  }
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(a.running_mean[c], b.running_mean[c]);
    EXPECT_EQ(a.running_var[c], b.running_var[c]);
    EXPECT_EQ(a.dweight[c], b.dweight[c]);
  }
  check_both({"(N, C, 1)", x}, N, C, C, 1);
  // Two values per channel, the fewest training allows.
  check_both({"(2, C, 1)", normal(2 * C, 13, 0, 1)}, 2, C, C, 1);
}

// Values near float's largest (3.4e38): the mean and the normalized output are
// finite, the squares are not (1e76). The math is finite, so must the result be.
std::vector<Case> near_overflow() {
  std::vector<float> extremes(16 * 32);
  for (size_t i = 0; i < extremes.size(); ++i)
    extremes[i] = (i % 3 ? 1 : -1) * std::numeric_limits<float>::max();
  return {{"sd 1e19", normal(16 * 32, 16, 0, 1e19)},
          {"sd 1e25", normal(16 * 32, 17, 5e25, 1e25)},
          {"sd 1e38", normal(16 * 32, 14, 0, 1e38)},
          {"mean 2e38, sd 1e37", normal(16 * 32, 15, 2e38, 1e37)},
          {"+-FLT_MAX", extremes}};
}

// ref:: accumulates in double: right up to float's largest values.
TEST(NumericsEdges, NearOverflowReferenceKernels) {
  for (const Case& c : near_overflow()) check_both(c, 16, 32, 8, 4, {&kRef});
}

// The default kernels accumulate their moments in double too (docs/numerics.md,
// "How the default (fast) kernels compute"): right up to float's largest
// values, with no fallback, on (N, C, L) and (N, C) layouts, 1 and 2 threads.
TEST(NumericsEdges, NearOverflowDefaultKernels) {
  for (int threads : {1, 2}) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    for (const Case& c : near_overflow()) {
      check_both(c, 16, 32, 8, 4, {&kDefault});
      check_both(c, 16, 32, 32, 1, {&kDefault});
    }
    omp_set_num_threads(saved);
  }
}

// The contract the layers' fallback relied on, kept: up to a spread of ~1e19 / sqrt(count)
// they are right; beyond, they must say so through their statistics (rstd 0 or
// a non-finite mean), which is what the layers check to fall back on ref::
// (src/nn/overflow_fallback.hpp). Either right or flagged, never silently wrong.
TEST(NumericsEdges, NearOverflowDefaultKernelsAreRightOrFlagTheOverflow) {
  check_both({"sd 1e17", normal(16 * 32, 18, 0, 1e17)}, 16, 32, 8, 4, {&kDefault});
  for (const Case& c : near_overflow()) {
    SCOPED_TRACE(c.name);
    const int64_t N = 16, D = 32;
    const std::vector<float> gamma(D, 1.0f), beta(D, 0.0f);
    std::vector<float> y(c.x.size()), mean(N), rstd(N);
    layernorm_forward(y.data(), mean.data(), rstd.data(), c.x.data(), gamma.data(), beta.data(), N,
                      D, c.eps);
    const Layout lay{N, D, [D](int64_t g, int64_t k) { return g * D + k; },
                     [](int64_t, int64_t k) { return k; }};
    const Reference want =
        reference(c.x, std::vector<float>(c.x.size(), 0), gamma, beta, c.eps, lay);
    for (int64_t n = 0; n < N; ++n) {
      const bool flagged = !std::isfinite(mean[n]) || !(rstd[n] > 0) || !std::isfinite(rstd[n]);
      if (flagged) continue;
      for (int64_t d = 0; d < D; ++d)
        EXPECT_NEAR(y[n * D + d], static_cast<double>(want.y[n * D + d]), 1e-4)
            << "row " << n << " is wrong but its statistics look fine (mean " << mean[n]
            << ", rstd " << rstd[n] << ")";
    }
    const int64_t C = 8, L = 4;
    std::vector<float> bmean(C), brstd(C), bvar(C);
    batchnorm_forward_train(y.data(), bmean.data(), brstd.data(), bvar.data(), c.x.data(),
                            gamma.data(), beta.data(), N, C, L, c.eps);
    const Layout blay{C, N * L,
                      [C, L](int64_t g, int64_t k) { return ((k / L) * C + g) * L + k % L; },
                      [](int64_t, int64_t) { return 0; }};
    const Reference bwant =
        reference(c.x, std::vector<float>(c.x.size(), 0), gamma, beta, c.eps, blay);
    for (int64_t ch = 0; ch < C; ++ch) {
      const bool flagged =
          !std::isfinite(bmean[ch]) || !(brstd[ch] > 0) || !std::isfinite(brstd[ch]);
      if (flagged) continue;
      for (int64_t k = 0; k < N * L; ++k) {
        const int64_t i = blay.index(ch, k);
        EXPECT_NEAR(y[i], static_cast<double>(bwant.y[i]), 1e-4)
            << "channel " << ch << " is wrong but its statistics look fine";
      }
    }
  }
}

// What a user sees: the LayerNorm and BatchNorm1d layers (default kernels,
// ref:: where the statistics overflow) are right near overflow, forward and backward.
TEST(NumericsEdges, NearOverflowLayers) {
  const int64_t N = 16, D = 32, C = 8, L = 4;
  for (const Case& c : near_overflow()) {
    SCOPED_TRACE(c.name);
    const std::vector<float> dy = normal(N * D, 99, 0, 1);
    Tensor<float> x({N, D}), g({N, D}), xb({N, C, L}), gb({N, C, L});
    std::copy(c.x.begin(), c.x.end(), x.data()), std::copy(c.x.begin(), c.x.end(), xb.data());
    std::copy(dy.begin(), dy.end(), g.data()), std::copy(dy.begin(), dy.end(), gb.data());

    LayerNorm<float> ln({D});
    const std::vector<float> lg = normal(D, 5, 1, 0.2), lb = normal(D, 6, 0, 0.5);
    std::copy(lg.begin(), lg.end(), ln.weight.data()),
        std::copy(lb.begin(), lb.end(), ln.bias.data());
    Result got{{}, {}, {}, {}};
    const Tensor<float>& y = ln.forward(x);
    const Tensor<float>& dx = ln.backward(g);
    got.y.assign(y.data(), y.data() + y.numel()), got.dx.assign(dx.data(), dx.data() + dx.numel());
    got.dgamma.assign(ln.dweight.data(), ln.dweight.data() + D);
    got.dbeta.assign(ln.dbias.data(), ln.dbias.data() + D);
    const Layout lay{N, D, [D](int64_t r, int64_t k) { return r * D + k; },
                     [](int64_t, int64_t k) { return k; }};
    check(c, kDefault, "LayerNorm layer", got, reference(c.x, dy, lg, lb, c.eps, lay), c.tol);

    BatchNorm1d<float> bn(C);
    const std::vector<float> bg = normal(C, 7, 1, 0.2), bb = normal(C, 8, 0, 0.5);
    std::copy(bg.begin(), bg.end(), bn.weight.data()),
        std::copy(bb.begin(), bb.end(), bn.bias.data());
    const Tensor<float>& yb = bn.forward(xb);
    const Tensor<float>& dxb = bn.backward(gb);
    got.y.assign(yb.data(), yb.data() + yb.numel()),
        got.dx.assign(dxb.data(), dxb.data() + dxb.numel());
    got.dgamma.assign(bn.dweight.data(), bn.dweight.data() + C);
    got.dbeta.assign(bn.dbias.data(), bn.dbias.data() + C);
    const Layout blay{C, N * L,
                      [](int64_t ch, int64_t k) { return ((k / L) * C + ch) * L + k % L; },
                      [](int64_t ch, int64_t) { return ch; }};
    check(c, kDefault, "BatchNorm1d layer", got, reference(c.x, dy, bg, bb, c.eps, blay), c.tol);
    // The running mean is right; the running variance is float, as in PyTorch,
    // and holds inf once the variance passes float's largest (3.4e38): a spread
    // above ~1.8e19. Saving such a model is refused (non-finite values).
    for (int64_t ch = 0; ch < C; ++ch) {
      EXPECT_TRUE(std::isfinite(bn.running_mean[ch]));
      EXPECT_FALSE(std::isnan(bn.running_var[ch]));
    }
  }
}

}  // namespace
}  // namespace normlab
