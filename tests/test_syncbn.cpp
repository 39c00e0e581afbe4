// SyncBatchNorm (include/normlab/syncbn.hpp) over simulated ranks
// (run_simulated_ranks: K threads, no mpirun): K ranks with shards of a batch
// compute what BatchNorm1d computes on the whole batch (outputs, dx, summed
// parameter gradients, running statistics), gradients by central differences
// in double for every option, the fast kernels against their plain twins, the
// numerics edges, and errors. The same under mpirun end to end:
// tests/scripts/mpi_train_test.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "gradcheck.hpp"
#include "normlab/distributed.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/syncbn.hpp"
#include "sync_simulated.hpp"

using namespace normlab;
using normlab::testing::shard;
using normlab::testing::Simulated;

namespace {

// K SyncBatchNorm ranks as one layer over the whole batch (tests/sync_simulated.hpp).
class SimulatedSync : public Simulated<SyncBatchNorm<double>> {
 public:
  SimulatedSync(int K, int64_t C, BatchNormOptions opt)
      : Simulated(
            K, [C, opt] { return std::make_unique<SyncBatchNorm<double>>(C, opt); }, opt.affine,
            opt.track_running_stats) {}
};

std::vector<BatchNormOptions> all_options() {
  std::vector<BatchNormOptions> out;
  for (bool affine : {true, false})
    for (bool track : {true, false})
      for (std::optional<double> m : {std::optional<double>(0.1), std::optional<double>()})
        out.push_back({1e-5, m, affine, track});
  return out;
}

}  // namespace

TEST(SyncBatchNorm, KRanksEqualBatchNormOnTheWholeBatch) {
  for (int K : {1, 2, 3})
    for (const Shape& s : {Shape{11, 5}, Shape{7, 3, 4}})
      for (const auto& opt : all_options()) {
        SCOPED_TRACE("K=" + std::to_string(K) + " shape " + shape_str(s));
        SimulatedSync sync(K, s[1], opt);
        BatchNorm1d<double> bn(s[1], opt);
        if (opt.affine) {
          Rng(5).fill_normal(sync.weight.data(), s[1], 1, 0.5);
          Rng(6).fill_normal(sync.bias.data(), s[1], 0, 0.5);
          bn.weight = sync.weight, bn.bias = sync.bias;
        }
        for (int step = 0; step < 3; ++step) {  // running statistics over several steps
          const Tensor<double> x = test::randn(s, 10 + step, 2, 3), dy = test::randn(s, 20 + step);
          const Tensor<double>& y1 = sync.forward(x);
          const Tensor<double>& y2 = bn.forward(x);
          for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_NEAR(y1[i], y2[i], 1e-12) << i;
          const Tensor<double>& d1 = sync.backward(dy);
          const Tensor<double>& d2 = bn.backward(dy);
          for (int64_t i = 0; i < d1.numel(); ++i) ASSERT_NEAR(d1[i], d2[i], 1e-12) << i;
          if (opt.affine)
            for (int64_t c = 0; c < s[1]; ++c) {
              ASSERT_NEAR(sync.dweight[c], bn.dweight[c], 1e-11);
              ASSERT_NEAR(sync.dbias[c], bn.dbias[c], 1e-11);
            }
          if (opt.track_running_stats) {
            EXPECT_EQ(sync.num_batches_tracked, bn.num_batches_tracked);
            for (int64_t c = 0; c < s[1]; ++c) {
              ASSERT_NEAR(sync.running_mean[c], bn.running_mean[c], 1e-12);
              ASSERT_NEAR(sync.running_var[c], bn.running_var[c], 1e-12);
            }
          }
        }
        // Eval mode: the running statistics, or each rank's own batch without them.
        sync.set_training(false), bn.set_training(false);
        const Tensor<double> x = test::randn(s, 99, 1, 2);
        const Tensor<double>& y1 = sync.forward(x);
        if (opt.track_running_stats || K == 1) {
          const Tensor<double>& y2 = bn.forward(x);
          for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_NEAR(y1[i], y2[i], 1e-12) << i;
        }
      }
}

TEST(SyncBatchNorm, GradientsByCentralDifferencesForEveryOption) {
  for (int K : {2, 3})
    for (const auto& opt : all_options()) {
      SimulatedSync sync(K, 3, opt);
      if (opt.affine) {
        Rng(7).fill_normal(sync.weight.data(), 3, 1, 0.5);
        Rng(8).fill_normal(sync.bias.data(), 3, 0, 0.5);
      }
      EXPECT_GRADIENTS_OK(sync, test::randn({7, 3}, 30 + K, 0.5, 2), 40 + K);
      EXPECT_GRADIENTS_OK(sync, test::randn({5, 3, 2}, 50 + K, -1, 1.5), 60 + K);
    }
}

TEST(SyncBatchNorm, AnEmptyShardTakesPartAndTheOthersDecide) {
  // 2 rows over 3 ranks: rank 0 holds none; the global statistics are those of the 2 rows.
  SimulatedSync sync(3, 4, {});
  BatchNorm1d<double> bn(4);
  const Tensor<double> x = test::randn({2, 4}, 3), dy = test::randn({2, 4}, 4);
  const Tensor<double>& y1 = sync.forward(x);
  const Tensor<double>& y2 = bn.forward(x);
  for (int64_t i = 0; i < y1.numel(); ++i) EXPECT_NEAR(y1[i], y2[i], 1e-12);
  const Tensor<double>& d1 = sync.backward(dy);
  const Tensor<double>& d2 = bn.backward(dy);
  for (int64_t i = 0; i < d1.numel(); ++i) EXPECT_NEAR(d1[i], d2[i], 1e-12);
  for (int64_t c = 0; c < 4; ++c) EXPECT_NEAR(sync.running_var[c], bn.running_var[c], 1e-12);
}

TEST(SyncBatchNorm, OneValuePerChannelOverAllRanksFailsOnEveryRank) {
  // One row over 2 ranks: each rank would be fine alone (0 and 1 rows), the global batch is not.
  SimulatedSync sync(2, 3, {});
  const Tensor<double> x = test::randn({1, 3}, 1);
  try {
    sync.forward(x);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("SyncBatchNorm(3): expected more than 1 value per channel"),
        std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("over all ranks"), std::string::npos) << e.what();
  }
}

TEST(SyncBatchNorm, ConstructionAndShapeErrorsNameTheLayerAndNumbers) {
  auto message = [](auto f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([] { SyncBatchNorm<float>(0); }),
            "SyncBatchNorm: num_features must be positive, got 0");
  EXPECT_NE(message([] {
              SyncBatchNorm<float>(3, {.eps = -1});
            }).find("SyncBatchNorm(3): eps must be >= 0 (0 only for eval), got -1"),
            std::string::npos);
  SyncBatchNorm<float> l(3);
  EXPECT_EQ(message([&] {
              l.output_shape({4, 5});
            }),
            "SyncBatchNorm(3): expected 3 channels, got shape (4, 5)");
  EXPECT_NE(message([&] { l.output_shape({4}); }).find("at least 2 dimensions"), std::string::npos);
  SyncBatchNorm<float> zero(3, {.eps = 0});
  const Tensor<float> x({4, 3}, 1.0f);
  EXPECT_NE(message([&] { zero.forward(x); }).find("eps must be positive"), std::string::npos);
}

TEST(SyncBatchNorm, FastKernelsMatchTheirPlainTwins) {
  for (const Shape& s : {Shape{300, 70}, Shape{9, 37, 50}, Shape{1, 1, 1}}) {
    const int64_t N = s[0], C = s[1], L = s.size() == 3 ? s[2] : 1;
    Tensor<float> x(s), dy(s), gamma({C}), fast(s), plain(s);
    Rng(1).fill_normal(x.data(), x.numel(), 3, 2);
    Rng(2).fill_normal(dy.data(), dy.numel(), 0, 1);
    Rng(3).fill_normal(gamma.data(), C, 1, 0.3);
    std::vector<double> m1(3 * C), m2(3 * C), rstd(C), mean(C), sums(2 * C);
    syncbn_moments(m1.data(), x.data(), N, C, L);
    ref::syncbn_moments(m2.data(), x.data(), N, C, L);
    for (int64_t i = 0; i < 3 * C; ++i) EXPECT_NEAR(m1[i], m2[i], 1e-9 * (1 + std::abs(m2[i])));
    for (int64_t c = 0; c < C; ++c)
      mean[c] = m2[3 * c + 1], rstd[c] = 1 / std::sqrt(m2[3 * c + 2] / (N * L) + 1e-5);
    syncbn_grad_sums(sums.data(), dy.data(), x.data(), mean.data(), N, C, L);
    syncbn_dx(fast.data(), dy.data(), x.data(), mean.data(), rstd.data(), gamma.data(), sums.data(),
              double(N * L), N, C, L);
    ref::syncbn_dx(plain.data(), dy.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                   sums.data(), double(N * L), N, C, L);
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_NEAR(fast[i], plain[i], 1e-4) << i;
  }
}

TEST(SyncBatchNorm, NumericsEdgesOverTwoRanks) {
  // Means of 1e4 with a spread of 1e-2, constant channels, tiny and huge eps,
  // values near float's largest: two float ranks against BatchNorm1d in double
  // on the whole batch.
  struct Case {
    const char* what;
    double mean, sd, eps;
  };
  for (const Case& k : {Case{"mean 1e4, spread 1e-2", 1e4, 1e-2, 1e-5},
                        Case{"constant", 7, 0, 1e-5}, Case{"tiny eps", 0, 1, 1e-30},
                        Case{"huge eps", 0, 1, 1e10}, Case{"near overflow", 0, 1e37, 1e-5}}) {
    SCOPED_TRACE(k.what);
    const Shape s{16, 4};
    Tensor<double> xd = test::randn(s, 5, k.mean, k.sd);
    Tensor<float> xf(s);
    for (int64_t i = 0; i < xd.numel(); ++i) xf[i] = static_cast<float>(xd[i]), xd[i] = xf[i];
    BatchNorm1d<double> bn(4, {.eps = k.eps});
    const Tensor<double>& want = bn.forward(xd);
    std::vector<Tensor<float>> ys(2), xs = {shard(xf, 0, 2), shard(xf, 1, 2)};
    std::vector<std::unique_ptr<SyncBatchNorm<float>>> l;
    for (int r = 0; r < 2; ++r)
      l.push_back(std::make_unique<SyncBatchNorm<float>>(4, BatchNormOptions{.eps = k.eps}));
    run_simulated_ranks(2, [&](Communicator& c) {
      l[c.rank()]->set_communicator(&c);
      ys[c.rank()] = l[c.rank()]->forward(xs[c.rank()]);
    });
    for (int r = 0; r < 2; ++r)
      for (int64_t i = 0; i < ys[r].numel(); ++i) {
        const double w = want[r * 32 + i];
        ASSERT_TRUE(std::isfinite(ys[r][i])) << i;
        ASSERT_NEAR(ys[r][i], w, 2e-3 * (1 + std::abs(w))) << i;
      }
    for (int64_t c = 0; c < 4; ++c) {
      const double v = bn.running_var[c];
      if (v > std::numeric_limits<float>::max())  // a float variance overflows, as in PyTorch
        EXPECT_TRUE(std::isinf(l[0]->running_var[c]));
      else
        EXPECT_NEAR(l[0]->running_var[c], v, 1e-4 * (1 + std::abs(v)));
    }
  }
}

TEST(SyncBatchNorm, NaNPropagatesToItsChannelOnEveryRank) {
  Tensor<float> x({4, 2}, 1.0f);
  x[0] = 0, x[2] = 2, x[1] = NAN;  // channel 1 of rank 0 holds NaN
  std::vector<Tensor<float>> ys(2), xs = {shard(x, 0, 2), shard(x, 1, 2)};
  std::vector<std::unique_ptr<SyncBatchNorm<float>>> l;
  for (int r = 0; r < 2; ++r) l.push_back(std::make_unique<SyncBatchNorm<float>>(2));
  run_simulated_ranks(2, [&](Communicator& c) {
    l[c.rank()]->set_communicator(&c);
    ys[c.rank()] = l[c.rank()]->forward(xs[c.rank()]);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(std::isnan(ys[r][1])) << r;
    EXPECT_TRUE(std::isnan(ys[r][3])) << r;
    EXPECT_TRUE(std::isfinite(ys[r][0])) << r;
  }
}

TEST(SyncBatchNorm, SpecNameAndStateDictKeysAreBatchNorms) {
  Rng rng(0);
  auto m = build_model<float>("flatten, linear(8), syncbn, relu, syncbatchnorm(8, affine=false)",
                              Shape{4, 3}, rng);
  std::vector<std::string> keys;
  for (const auto& e : m->state()) keys.push_back(e.name);
  EXPECT_EQ(keys,
            (std::vector<std::string>{"1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean",
                                      "2.running_var", "2.num_batches_tracked", "4.running_mean",
                                      "4.running_var", "4.num_batches_tracked"}));
  EXPECT_NE(m->name().find("SyncBatchNorm(8)"), std::string::npos) << m->name();
  EXPECT_NE(m->name().find("SyncBatchNorm(8, affine=false)"), std::string::npos) << m->name();
}

TEST(Distributed, SimulatedRanksSumInRankOrderAndAgreeOnErrors) {
  run_simulated_ranks(3, [](Communicator& c) {
    float v[2] = {1.0f + c.rank(), 10.0f};
    c.allreduce_sum(v, 2);
    EXPECT_EQ(v[0], 6.0f);
    EXPECT_EQ(v[1], 30.0f);
    try {
      agree_on_errors(c, [&] {
        if (c.rank() == 1) fail("cannot read x");
      });
      ADD_FAILURE() << "expected an error";
    } catch (const AgreedError& e) {
      EXPECT_EQ(std::string(e.what()), "rank 1 of 3: cannot read x");
    }
    // The same reason on every rank is said once; different ones name each rank.
    try {
      agree_on_errors(c, [&] { fail("bad checkpoint"); });
      ADD_FAILURE() << "expected an error";
    } catch (const AgreedError& e) {
      EXPECT_EQ(std::string(e.what()), "bad checkpoint");
    }
    try {
      agree_on_errors(c, [&] { fail(c.rank() == 2 ? "b" : "a"); });
      ADD_FAILURE() << "expected an error";
    } catch (const AgreedError& e) {
      EXPECT_EQ(std::string(e.what()), "rank 0 of 3: a; rank 1 of 3: a; rank 2 of 3: b");
    }
  });
  EXPECT_EQ(world().size(), 1);  // not started by mpirun: a single process
}

TEST(SyncBatchNorm, SpecErrorsNameTheItemAndNumbers) {
  try {
    plan_model("flatten, linear(8), syncbn(5)", Shape{4, 3});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("column 21"), std::string::npos) << m;
    EXPECT_NE(m.find("syncbn(5) expects 5 channels"), std::string::npos) << m;
    EXPECT_NE(m.find("(4, 8)"), std::string::npos) << m;
  }
}
