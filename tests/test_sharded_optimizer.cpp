// The sharded optimizer (ZeRO stage 1, Rajbhandari et al. 2020, sec. 5.1;
// docs/distributed.md): the communicator's reduce-scatter and slice
// all-gather, Optimizer::shard_range / shard / gather_state, and the
// Trainer's sharded step over K simulated ranks (run_simulated_ranks) against
// one process on the whole batch and against the unsharded K-rank step. The
// same under mpirun: tests/scripts/mpi_train_test.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/optim.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"
#include "normlab/train.hpp"

using namespace normlab;

namespace {

std::vector<int64_t> slice_counts(int64_t flat, int K) {
  std::vector<int64_t> c;
  for (int r = 0; r < K; ++r) {
    const auto [lo, hi] = Optimizer::shard_range(flat, r, K);
    c.push_back(hi - lo);
  }
  return c;
}

}  // namespace

TEST(ShardedOptimizer, ShardRangeCutsWholeLinesInRankOrder) {
  for (int64_t flat : {0, 16, 48, 160, 802336}) {
    for (int K = 1; K <= 5; ++K) {
      int64_t at = 0, smallest = flat, largest = 0;
      for (int r = 0; r < K; ++r) {
        const auto [lo, hi] = Optimizer::shard_range(flat, r, K);
        EXPECT_EQ(lo, at) << flat << " " << K << " " << r;
        EXPECT_LE(lo, hi);
        EXPECT_EQ(lo % Optimizer::kFlatAlign, 0);
        smallest = std::min(smallest, hi - lo);
        largest = std::max(largest, hi - lo);
        at = hi;
      }
      EXPECT_EQ(at, flat);
      EXPECT_LE(largest - smallest, Optimizer::kFlatAlign)
          << flat << " " << K;  // as even as lines allow
    }
  }
  EXPECT_THROW(Optimizer::shard_range(64, 2, 2), Error);
  EXPECT_THROW(Optimizer::shard_range(64, -1, 2), Error);
}

// Uneven slices and an empty one (K = 4 over 3 lines of 16).
TEST(ShardedOptimizer, SimulatedReduceScatterAndAllgatherSlices) {
  for (int K : {1, 2, 3, 4}) {
    for (int64_t flat : {int64_t(48), int64_t(1000 * 16)}) {
      const std::vector<int64_t> counts = slice_counts(flat, K);
      run_simulated_ranks(K, [&](Communicator& c) {
        const int r = c.rank();
        std::vector<float> g(static_cast<size_t>(flat));
        for (int64_t i = 0; i < flat; ++i) g[i] = static_cast<float>(i % 7) + 0.25f * (r + 1);
        const auto [lo, hi] = Optimizer::shard_range(flat, r, K);
        std::vector<float> mine(static_cast<size_t>(hi - lo) + 1, -1.0f);
        c.reduce_scatter_sum(g.data(), mine.data(), counts);
        const float extra = 0.25f * static_cast<float>(K * (K + 1) / 2);
        for (int64_t j = 0; j < hi - lo; ++j)
          ASSERT_EQ(mine[j], static_cast<float>((lo + j) % 7) * K + extra) << K << " " << j;
        EXPECT_EQ(mine.back(), -1.0f);  // nothing written past the slice
        // Each rank writes its slice (its rank number) into an otherwise unknown block.
        std::vector<float> w(static_cast<size_t>(flat), -5.0f);
        for (int64_t j = lo; j < hi; ++j) w[j] = static_cast<float>(r);
        c.allgather_slices(w.data(), counts);
        for (int q = 0; q < K; ++q) {
          const auto [a, b] = Optimizer::shard_range(flat, q, K);
          for (int64_t j = a; j < b; ++j) ASSERT_EQ(w[j], static_cast<float>(q));
        }
      });
    }
  }
  std::vector<float> x(4);
  EXPECT_THROW(world().reduce_scatter_sum(x.data(), x.data() + 2, std::vector<int64_t>{2, 2}),
               Error);  // two counts, one rank
}

TEST(ShardedOptimizer, ShardRefusesBadRangesAndStateBecomesGatherOnly) {
  Rng rng(1);
  auto model = build_model<float>("linear(20), relu, linear(3)", Shape{4, 5}, rng);
  auto opt = make_optimizer("adam", {}, model->state());
  const int64_t flat = static_cast<int64_t>(opt->values().size());  // 112 + 32 + 64 + 16
  EXPECT_THROW(opt->shard(8, 32), Error);                           // not on a line
  EXPECT_THROW(opt->shard(32, 16), Error);                          // reversed
  EXPECT_THROW(opt->shard(0, flat + 16), Error);                    // past the block
  EXPECT_TRUE(opt->shard_grads().empty());
  // A state the shard keeps: exp_avg of the first parameter.
  (*opt->state()[1].value)[3] = 7.0f;
  opt->shard(0, 64);
  EXPECT_TRUE(opt->sharded());
  EXPECT_EQ(opt->shard_grads().size(), 64u);
  try {
    opt->state();
    ADD_FAILURE() << "state() of a sharded optimizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[0, 64) of " + std::to_string(flat)), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(opt->shard(0, 64), Error);  // once only
  // One process: the whole block is rank 0's slice; [0, 64) is not.
  EXPECT_THROW(opt->gather_state(world()), Error);
  auto opt1 = make_optimizer("adam", {}, model->state());
  opt1->shard(0, flat);
  (*opt1->gather_state(world()).entries[1].value)[0];  // the whole state, from the one rank
}

namespace {

struct RunResult {
  std::vector<float> values;  // the flat parameter block at the end
  std::vector<std::vector<float>> state;
  int64_t steps = 0;
};

constexpr int64_t kRows = 11, kD = 6;
constexpr int kSteps = 4;

// kSteps training steps of `spec` with optimizer (name, options) on a fixed
// batch of kRows rows: in one process when comm is null, else this rank's
// contiguous slice of the rows, sharded or not.
RunResult train(const std::string& name, const OptimizerOptions& options, Communicator* comm,
                bool shard, bool merged = false) {
  Rng rng(5);
  auto model = build_model<float>("linear(16), relu, ln, linear(16), relu, linear(4)",
                                  Shape{kRows, kD}, rng);
  auto opt = make_optimizer(name, options, model->state());
  if (comm && shard) {
    const auto [lo, hi] = Optimizer::shard_range(static_cast<int64_t>(opt->values().size()),
                                                 comm->rank(), comm->size());
    opt->shard(lo, hi);
  }
  Trainer trainer(*model, *opt);
  trainer.set_communicator(comm);
  Rng data(9);
  std::vector<float> x(kRows * kD);
  std::vector<int32_t> y(kRows);
  for (auto& v : x) v = static_cast<float>(data.normal());
  for (int64_t i = 0; i < kRows; ++i) y[i] = static_cast<int32_t>(i % 4);
  const int K = comm ? comm->size() : 1, r = comm ? comm->rank() : 0;
  const int64_t lo = kRows * r / K, hi = kRows * (r + 1) / K;
  Tensor<float> xs({hi - lo, kD});
  std::copy(x.begin() + lo * kD, x.begin() + hi * kD, xs.data());
  for (int s = 0; s < kSteps; ++s) trainer.train_step(xs, y.data() + lo, merged ? kRows : 0);
  RunResult out;
  out.values.assign(opt->values().begin(), opt->values().end());
  Communicator& c = comm ? *comm : world();
  const Optimizer::GatheredState g = opt->gather_state(c);
  for (const auto& e : g.entries) {
    if (e.count) out.steps = *e.count;
    if (e.value) out.state.emplace_back(e.value->data(), e.value->data() + e.value->numel());
  }
  return out;
}

}  // namespace

// Every rank ends with the one-process weights and the gathered state is the
// one-process state (float tolerance: the ranks sum partial gradients), and
// bitwise with the unsharded K-rank step (both sum the same values in rank
// order): Adam with L2 and amsgrad, AdamW, SGD with momentum, nesterov and
// weight decay; K = 2 and 3 (uneven rows and slices).
TEST(ShardedOptimizer, TrainerStepEqualsOneProcessAndTheUnshardedRanks) {
  const std::vector<std::pair<std::string, OptimizerOptions>> optimizers = {
      {"adam", {.lr = 0.01, .weight_decay = 0.1, .amsgrad = true}},
      {"adamw", {.lr = 0.01}},
      {"sgd", {.lr = 0.1, .weight_decay = 0.01, .momentum = 0.9, .nesterov = true}},
  };
  for (const auto& [name, options] : optimizers) {
    const RunResult one = train(name, options, nullptr, false);
    for (int K : {2, 3}) {
      std::vector<RunResult> sharded(K), plain(K), merged(K);
      std::mutex m;
      run_simulated_ranks(K, [&](Communicator& c) {
        RunResult a = train(name, options, &c, true);
        RunResult b = train(name, options, &c, false);
        RunResult d = train(name, options, &c, true, true);  // the loss's sums after backward
        std::lock_guard<std::mutex> lk(m);
        sharded[c.rank()] = std::move(a);
        plain[c.rank()] = std::move(b);
        merged[c.rank()] = std::move(d);
      });
      for (int r = 0; r < K; ++r) {
        SCOPED_TRACE(name + ", K = " + std::to_string(K) + ", rank " + std::to_string(r));
        ASSERT_EQ(sharded[r].values.size(), one.values.size());
        for (size_t i = 0; i < one.values.size(); ++i) {
          ASSERT_EQ(sharded[r].values[i], plain[r].values[i]) << i;
          ASSERT_EQ(merged[r].values[i], plain[r].values[i]) << i;
          ASSERT_NEAR(sharded[r].values[i], one.values[i], 2e-5 + 2e-4 * std::fabs(one.values[i]))
              << i;
        }
        EXPECT_EQ(sharded[r].steps, kSteps);
        ASSERT_EQ(sharded[r].state.size(), one.state.size());
        for (size_t b = 0; b < one.state.size(); ++b)
          for (size_t i = 0; i < one.state[b].size(); ++i) {
            ASSERT_EQ(sharded[r].state[b][i], plain[r].state[b][i]) << b << " " << i;
            ASSERT_NEAR(sharded[r].state[b][i], one.state[b][i],
                        1e-6 + 2e-4 * std::fabs(one.state[b][i]))
                << b << " " << i;
          }
      }
    }
  }
}

namespace {
// Passes x through; on rank `bad_rank` its backward puts a NaN into its bias
// gradient at `bad` and an infinity into `scale` (later in the block).
class BadGradientOnOneRank : public Layer<float> {
 public:
  BadGradientOnOneRank(int rank, int bad_rank, int64_t bad) : mine_(rank == bad_rank), bad_(bad) {}
  std::string name() const override { return "BadGradientOnOneRank"; }
  Shape output_shape(const Shape& in) const override { return in; }
  const Tensor<float>& forward_impl(const Tensor<float>& x) override { return x; }
  const Tensor<float>& backward(const Tensor<float>& dy) override {
    if (mine_) {
      dbias[bad_] = std::numeric_limits<float>::quiet_NaN();
      dscale[0] = std::numeric_limits<float>::infinity();
    }
    return dy;
  }
  std::vector<StateEntry<float>> state() override {
    return {{"weight", &weight, &dweight}, {"bias", &bias, &dbias}, {"scale", &scale, &dscale}};
  }
  Tensor<float> weight{{4000}}, dweight{{4000}}, bias{{37}}, dbias{{37}}, scale{{1}}, dscale{{1}};

 private:
  bool mine_;
  int64_t bad_;
};
}  // namespace

// A NaN that one rank's gradient brings into another rank's slice: every rank
// refuses the same step with the same message, and no weight moved.
TEST(ShardedOptimizer, EveryRankRefusesAStepWithANonFiniteGradientInAnySlice) {
  for (int K : {2, 3})
    for (int bad_rank = 0; bad_rank < K; ++bad_rank) {
      std::vector<std::string> messages(K);
      run_simulated_ranks(K, [&](Communicator& c) {
        Rng rng(1);
        Sequential<float> model;
        model.add(std::make_unique<Linear<float>>(5, 3, true, rng));
        model.add(std::make_unique<BadGradientOnOneRank>(c.rank(), bad_rank, 20));
        auto opt = make_optimizer("adam", {}, model.state());
        const auto [lo, hi] =
            Optimizer::shard_range(static_cast<int64_t>(opt->values().size()), c.rank(), K);
        opt->shard(lo, hi);
        const std::vector<float> before(opt->values().begin(), opt->values().end());
        Trainer trainer(model, *opt);
        trainer.set_communicator(&c);
        const std::vector<float> x(4 * 5, 0.5f);
        const std::vector<int32_t> y = {0, 1, 2, 0};
        try {
          trainer.train_step(x.data(), y.data(), 4, 5);
          ADD_FAILURE() << "NaN gradient accepted";
        } catch (const NonFiniteError& e) {
          messages[c.rank()] = e.what();
        }
        EXPECT_EQ(std::vector<float>(opt->values().begin(), opt->values().end()), before);
        EXPECT_EQ(opt->steps(), 0);
      });
      for (int r = 0; r < K; ++r)
        EXPECT_EQ(messages[r],
                  "training step 1: the gradient of 1.bias holds nan at flat index 20; the "
                  "weights were not updated")
            << "K = " << K << ", NaN from rank " << bad_rank << ", rank " << r;
    }
}

// With the loss's sums merged into the gradient check's all-reduce (the
// global row count given), a NaN input on one rank still stops every rank at
// the same step before any update, each naming what it saw; a wrong global
// row count is an Error on every rank.
TEST(ShardedOptimizer, MergedLossAgreementRefusesANanInputOnAnyRank) {
  for (int K : {2, 3}) {
    std::vector<std::string> messages(K);
    run_simulated_ranks(K, [&](Communicator& c) {
      Rng rng(1);
      auto model = build_model<float>("linear(8), relu, linear(3)", Shape{6, 5}, rng);
      auto opt = make_optimizer("sgd", {.lr = 0.1}, model->state());
      const auto [lo, hi] =
          Optimizer::shard_range(static_cast<int64_t>(opt->values().size()), c.rank(), K);
      opt->shard(lo, hi);
      Trainer trainer(*model, *opt);
      trainer.set_communicator(&c);
      Tensor<float> x({2, 5}, 0.5f);
      if (c.rank() == K - 1) x[7] = std::numeric_limits<float>::quiet_NaN();
      const std::vector<int32_t> y = {0, 1};
      const std::vector<float> before(opt->values().begin(), opt->values().end());
      try {
        trainer.train_step(x, y.data(), 2 * K);
        ADD_FAILURE() << "NaN input accepted";
      } catch (const NonFiniteError& e) {
        messages[c.rank()] = e.what();
      }
      EXPECT_EQ(std::vector<float>(opt->values().begin(), opt->values().end()), before);
      x[7] = 0.5f;
      EXPECT_THROW(trainer.train_step(x, y.data(), 2 * K + 1), Error);
    });
    for (int r = 0; r < K; ++r)
      EXPECT_EQ(messages[r],
                r == K - 1
                    ? "training step 1: the input batch holds nan at row 1, column 2 of rank " +
                          std::to_string(r) + "'s shard; the weights were not updated"
                    : std::string("training step 1: the input batch of another rank holds a "
                                  "NaN or infinity; the weights were not updated"))
          << "K = " << K << ", rank " << r;
  }
}
