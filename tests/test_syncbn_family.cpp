// Issue 13, part 2: synchronised statistics for the rest of the BatchNorm
// family over simulated ranks (run_simulated_ranks: K threads, no mpirun).
//   - SyncBatchNorm on (N, C, H, W) shards equals BatchNorm2d on the whole batch
//     (what --sync-bn makes of a batchnorm2d);
//   - SyncBatchRenorm1d equals BatchRenorm1d on the whole batch (r and d from
//     the global statistics, running statistics, dx, summed parameter
//     gradients) over several steps, and its backward passes central
//     differences in double for every option;
//   - sync_batch_norms (--sync-bn) converts bn, bn2d and brn and refuses Ghost
//     BN and mean-only BN with the item and column.
// End to end under mpirun: tests/scripts/mpi_train_test.sh (mode syncfamily).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <mutex>

#include "gradcheck.hpp"
#include "normlab/distributed.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/norm2d.hpp"
#include "normlab/syncbn.hpp"
#include "normlab/syncbn_family.hpp"
#include "sync_simulated.hpp"

using namespace normlab;
using normlab::testing::shard;
using normlab::testing::Simulated;

namespace {

// Forward, backward and state of `sync` and `one` (the same layer on the whole
// batch) agree over `steps` training steps, then in eval mode.
template <typename S, typename O>
void expect_same(S& sync, O& one, const Shape& s, bool affine, int steps, double tol) {
  for (int step = 0; step < steps; ++step) {
    // Drifting statistics, so Batch Renorm's r and d move off 1 and 0 (and clip).
    const Tensor<double> x = test::randn(s, 10 + step, 0.7 * step, 1 + step),
                         dy = test::randn(s, 20 + step);
    const Tensor<double>& y1 = sync.forward(x);
    const Tensor<double>& y2 = one.forward(x);
    for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_NEAR(y1[i], y2[i], tol) << "step " << step;
    const Tensor<double>& d1 = sync.backward(dy);
    const Tensor<double>& d2 = one.backward(dy);
    for (int64_t i = 0; i < d1.numel(); ++i) ASSERT_NEAR(d1[i], d2[i], tol) << "step " << step;
    if (affine)
      for (int64_t c = 0; c < s[1]; ++c) {
        ASSERT_NEAR(sync.dweight[c], one.dweight[c], 10 * tol);
        ASSERT_NEAR(sync.dbias[c], one.dbias[c], 10 * tol);
      }
    EXPECT_EQ(sync.num_batches_tracked, one.num_batches_tracked);
    for (int64_t c = 0; c < s[1]; ++c) {
      ASSERT_NEAR(sync.running_mean[c], one.running_mean[c], tol);
      ASSERT_NEAR(sync.running_var[c], one.running_var[c], tol);
    }
  }
  sync.set_training(false), one.set_training(false);
  const Tensor<double> x = test::randn(s, 99, 1, 2);
  const Tensor<double>& y1 = sync.forward(x);
  const Tensor<double>& y2 = one.forward(x);
  for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_NEAR(y1[i], y2[i], tol) << "eval";
}

std::vector<BatchRenormOptions> renorm_options() {
  std::vector<BatchRenormOptions> out;
  for (bool affine : {true, false})
    for (std::optional<double> m : {std::optional<double>(0.1), std::optional<double>()}) {
      BatchRenormOptions o;
      o.affine = affine, o.momentum = m, o.rmax = 1.5, o.dmax = 0.5;
      out.push_back(o);
    }
  BatchRenormOptions ramp;  // the schedule: BatchNorm for a step, then ramps
  ramp.rmax = 3, ramp.dmax = 5, ramp.warmup = 1, ramp.rmax_ramp = 2, ramp.dmax_ramp = 1;
  out.push_back(ramp);
  return out;
}

}  // namespace

TEST(SyncBatchNorm2d, KRanksOnNCHWEqualBatchNorm2dOnTheWholeBatch) {
  for (int K : {2, 3})
    for (bool affine : {true, false})
      for (std::optional<double> m : {std::optional<double>(0.1), std::optional<double>()}) {
        SCOPED_TRACE("K=" + std::to_string(K) + " affine " + std::to_string(affine));
        const BatchNormOptions opt{1e-5, m, affine, true};
        const Shape s{7, 3, 4, 5};  // 7 rows over 3 ranks: 2, 2, 3
        Simulated<SyncBatchNorm<double>> sync(
            K, [&] { return std::make_unique<SyncBatchNorm<double>>(3, opt); }, affine, true);
        BatchNorm2d<double> bn(3, opt);
        if (affine) {
          Rng(5).fill_normal(sync.weight.data(), 3, 1, 0.5);
          Rng(6).fill_normal(sync.bias.data(), 3, 0, 0.5);
          bn.weight = sync.weight, bn.bias = sync.bias;
        }
        expect_same(sync, bn, s, affine, 3, 1e-11);
      }
}

TEST(SyncBatchRenorm, KRanksEqualBatchRenormOnTheWholeBatch) {
  for (int K : {1, 2, 3})
    for (const Shape& s : {Shape{11, 4}, Shape{7, 3, 5}, Shape{5, 2, 3, 2}})
      for (const auto& opt : renorm_options()) {
        SCOPED_TRACE("K=" + std::to_string(K) + " shape " + shape_str(s) + " rmax " +
                     std::to_string(opt.rmax));
        Simulated<SyncBatchRenorm1d<double>> sync(
            K, [&] { return std::make_unique<SyncBatchRenorm1d<double>>(s[1], opt); }, opt.affine,
            true);
        BatchRenorm1d<double> brn(s[1], opt);
        if (opt.affine) {
          Rng(7).fill_normal(sync.weight.data(), s[1], 1, 0.5);
          Rng(8).fill_normal(sync.bias.data(), s[1], 0, 0.5);
          brn.weight = sync.weight, brn.bias = sync.bias;
        }
        expect_same(sync, brn, s, opt.affine, 4, 1e-10);
        if (K > 1) {  // r and d moved off BatchNorm's 1 and 0: the test tests something
          double off = 0;
          for (double r : sync.ranks_[0]->synced_r()) off += std::abs(r - 1);
          EXPECT_GT(off, 1e-3);
        }
      }
}

TEST(SyncBatchRenorm, GradientsByCentralDifferencesForEveryOption) {
  // r and d are constants of the backward (stop_gradient): frozen here, as
  // BatchRenorm1d's own gradient checks do; the statistics still come from all ranks.
  for (int K : {2, 3})
    for (const auto& opt : renorm_options()) {
      for (const Shape& s : {Shape{7, 3}, Shape{5, 3, 2}}) {
        Simulated<SyncBatchRenorm1d<double>> sync(
            K,
            [&] {
              auto l = std::make_unique<SyncBatchRenorm1d<double>>(3, opt);
              l->freeze_correction(Tensor<double>::from({3}, {1.3, 0.8, 1.1}),
                                   Tensor<double>::from({3}, {0.2, -0.4, 0.1}));
              return l;
            },
            opt.affine, true);
        if (opt.affine) {
          Rng(7).fill_normal(sync.weight.data(), 3, 1, 0.5);
          Rng(8).fill_normal(sync.bias.data(), 3, 0, 0.5);
        }
        EXPECT_GRADIENTS_OK(sync, test::randn(s, 30 + K, 0.5, 2), 40 + K);
      }
    }
}

TEST(SyncBatchRenorm, OneValuePerChannelOverAllRanksFailsOnEveryRankAndAnEmptyShardTakesPart) {
  // One row over 2 ranks: rank 0 is empty, the global batch has 1 value per channel.
  int refused = 0;
  std::mutex m;
  try {
    run_simulated_ranks(2, [&](Communicator& c) {
      SyncBatchRenorm1d<double> l(3, {}, &c);
      try {
        const Tensor<double> x = c.rank() == 0 ? Tensor<double>({0, 3}) : test::randn({1, 3}, 1);
        l.forward(x);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("over all ranks"), std::string::npos) << e.what();
        std::lock_guard<std::mutex> lk(m);
        ++refused;
      }
    });
  } catch (const Error&) {
  }
  EXPECT_EQ(refused, 2);
  // 2 rows over 3 ranks: rank 0 holds none; the statistics are those of the 2 rows.
  Simulated<SyncBatchRenorm1d<double>> sync(
      3, [] { return std::make_unique<SyncBatchRenorm1d<double>>(4); }, true, true);
  BatchRenorm1d<double> brn(4);
  expect_same(sync, brn, Shape{2, 4}, true, 2, 1e-10);
}

TEST(SyncBatchNorms, SyncBnConvertsBnBn2dAndBrnAndRefusesGhostAndMeanOnly) {
  auto plan = plan_model(
      "unflatten(2, 2, 2), bn2d, flatten, linear(6), bn, relu, brn(rmax=2, dmax=1), linear(3)",
      Shape{4, 8});
  sync_batch_norms(plan);
  EXPECT_EQ(plan[1].kind, LayerKind::SyncBatchNorm);
  EXPECT_EQ(plan[4].kind, LayerKind::SyncBatchNorm);
  EXPECT_EQ(plan[6].kind, LayerKind::SyncBatchRenorm);
  Rng rng(0);
  auto model = build_model<float>(plan, rng);
  EXPECT_NE(model->name().find("SyncBatchRenorm1d(6, rmax=2, dmax=1)"), std::string::npos)
      << model->name();
  // The keys (and so checkpoints and PyTorch's load_state_dict) stay those of the plain model.
  Rng rng2(0);
  auto plain = build_model<float>(
      "unflatten(2, 2, 2), bn2d, flatten, linear(6), bn, relu, brn(rmax=2, dmax=1), linear(3)",
      Shape{4, 8}, rng2);
  std::vector<std::string> a, b;
  for (const auto& e : model->state()) a.push_back(e.name);
  for (const auto& e : plain->state()) b.push_back(e.name);
  EXPECT_EQ(a, b);
  // A 4-D syncbn in a spec, as PyTorch's SyncBatchNorm takes (N, C, *).
  EXPECT_EQ(plan_model("unflatten(2, 2, 2), syncbn(2)", Shape{4, 8})[1].kind,
            LayerKind::SyncBatchNorm);

  for (const auto& [spec, what] :
       {std::pair<std::string, std::string>{
            "flatten, linear(4), gbn(virtual_batch_size=2)",
            "column 21: gbn(virtual_batch_size=2): Ghost BatchNorm"},
        {"flatten, meanonlybn", "column 10: meanonlybn: mean-only BatchNorm"}}) {
    auto p = plan_model(spec, Shape{4, 8});
    try {
      sync_batch_norms(p);
      ADD_FAILURE() << "expected an error for " << spec;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--sync-bn: model spec, " + what), std::string::npos)
          << e.what();
    }
  }
}
