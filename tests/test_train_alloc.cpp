// A training step allocates nothing once every buffer has met its batch
// shape (issue 4: activations and gradients preallocated once per batch
// shape), and neither does a batched evaluation. Counted with operator new.
#include <gtest/gtest.h>

#include <vector>

#include "alloc_counter.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/optim.hpp"
#include "normlab/rng.hpp"
#include "normlab/train.hpp"

using namespace normlab;

namespace {

constexpr int64_t kD = 784;

struct Batch {
  Tensor<float> x;
  std::vector<int32_t> y;
};

Batch random_batch(int64_t B, uint64_t seed) {
  Batch b{Tensor<float>({B, kD}), std::vector<int32_t>(static_cast<size_t>(B))};
  Rng rng(seed);
  rng.fill_uniform(b.x.data(), b.x.numel(), 0.0, 1.0);
  for (auto& v : b.y) v = static_cast<int32_t>(rng.below(10));
  return b;
}

void expect_steps_allocate_nothing(const std::string& spec, const std::string& optimizer) {
  SCOPED_TRACE(spec + " with " + optimizer);
  Rng rng(1);
  auto model = build_model<float>(spec, Shape{16, kD}, rng);
  OptimizerOptions o;
  if (optimizer == "sgd") o.lr = 0.01, o.momentum = 0.9;
  auto opt = make_optimizer(optimizer, o, model->state());
  Trainer trainer(*model, *opt);
  // Two batch shapes, as an epoch has (full batches and a shorter last one).
  const Batch full = random_batch(16, 2), last = random_batch(9, 3);
  trainer.train_step(full.x, full.y.data());
  trainer.train_step(last.x, last.y.data());
  trainer.evaluate(full.x.data(), full.y.data(), 16, kD, 7);
  trainer.train_step(full.x.data(), full.y.data(), 16, kD);  // the copying form

  EXPECT_EQ(normlab::testing::allocations_during([&] {
              trainer.train_step(full.x, full.y.data());
              trainer.train_step(full.x, full.y.data());
              trainer.train_step(last.x, last.y.data());
              trainer.train_step(full.x, full.y.data());
            }),
            0)
      << "train_step";
  EXPECT_EQ(normlab::testing::allocations_during([&] {
              trainer.train_step(full.x.data(), full.y.data(), 16, kD);  // the copying form
            }),
            0)
      << "train_step from a plain buffer";
  EXPECT_EQ(normlab::testing::allocations_during(
                [&] { trainer.evaluate(full.x.data(), full.y.data(), 16, kD, 7); }),
            0)
      << "evaluate";
}

}  // namespace

TEST(TrainAllocations, Seed001StepAllocatesNothing) {
  expect_steps_allocate_nothing("seed001", "adam");
}

TEST(TrainAllocations, NotebookLayersAndOtherOptimizersAllocateNothing) {
  expect_steps_allocate_nothing("seed001-notebook", "adamw");
  expect_steps_allocate_nothing("wnlinear(784, 32, dim=none), relu, linear(32, 10)", "sgd");
}

TEST(TrainAllocations, DepthArchitecturesAllocateNothing) {
  for (const char* arch : {"none", "bn-pre", "bn-post", "ln-pre", "ln-post"})
    expect_steps_allocate_nothing(std::string(arch) + ":depth=2,width=32", "adam");
}
