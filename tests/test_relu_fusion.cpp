// Sequential::fuse_relus: a ReLU after a WeightNormLinear (per-row norms) is
// applied inside that layer's passes. The network must compute exactly what
// it computed unfused (same operations in the same order, so the same bits),
// and its gradients must pass the numeric check in double.
#include <gtest/gtest.h>
#include <omp.h>

#include <vector>

#include "gradcheck.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

using namespace normlab;

namespace {

std::vector<float> values(const Tensor<float>& t) {
  return std::vector<float>(t.data(), t.data() + t.numel());
}

}  // namespace

TEST(ReluFusion, Seed001GivesTheSameBitsFusedOrNot) {
  for (int threads : {1, 2}) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Rng r1(5), r2(5);
    auto plain = build_model<float>("seed001", Shape{64, 784}, r1);
    auto fused = build_model<float>("seed001", Shape{64, 784}, r2);
    EXPECT_EQ(fused->fuse_relus(), 3);  // every wnlinear followed by relu
    EXPECT_EQ(fused->fuse_relus(), 0);  // and only once
    Tensor<float> x({64, 784}), dy({64, 10});
    Rng data(6);
    data.fill_uniform(x.data(), x.numel(), 0.0, 1.0);
    data.fill_uniform(dy.data(), dy.numel(), -1.0, 1.0);
    for (int step = 0; step < 2; ++step) {  // the second step: BatchNorm's running statistics
      for (auto* m : {plain.get(), fused.get()}) m->zero_grad();
      EXPECT_EQ(values(plain->forward(x)), values(fused->forward(x))) << "threads=" << threads;
      plain->backward(dy);
      fused->backward(dy);
      auto a = plain->state(), b = fused->state();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].value) {
          EXPECT_EQ(values(*a[i].value), values(*b[i].value)) << a[i].name;
        }
        if (a[i].grad) {
          EXPECT_EQ(values(*a[i].grad), values(*b[i].grad)) << a[i].name << " grad";
        }
      }
    }
    omp_set_num_threads(saved);
  }
}

TEST(ReluFusion, OnlyPerRowWeightNormFusesAndNestedSequentialsToo) {
  Rng rng(1);
  // Linear and the whole-matrix WeightNorm keep their ReLU; nested children are visited.
  auto m = build_model<float>(
      "wnlinear(8, 8), relu, linear(8), relu, wnlinear(8, dim=none), relu, "
      "inner: [wnlinear(8, 4), relu, relu]",
      Shape{3, 8}, rng);
  EXPECT_EQ(m->fuse_relus(), 2);
  EXPECT_TRUE(dynamic_cast<ReLU<float>&>((*m)[1]).fused());
  EXPECT_FALSE(dynamic_cast<ReLU<float>&>((*m)[3]).fused());
  EXPECT_FALSE(dynamic_cast<ReLU<float>&>((*m)[5]).fused());
  auto& inner = dynamic_cast<Sequential<float>&>((*m)[6]);
  EXPECT_TRUE(dynamic_cast<ReLU<float>&>(inner[1]).fused());
  EXPECT_FALSE(dynamic_cast<ReLU<float>&>(inner[2]).fused());  // a ReLU after a ReLU
}

TEST(ReluFusion, FusedNetworkPassesTheGradientCheck) {
  Rng rng(11);
  Sequential<double> s;
  s.add(std::make_unique<WeightNormLinear<double>>(6, 5, true, WeightNormDim::Rows, rng));
  s.add(std::make_unique<ReLU<double>>());
  s.add(std::make_unique<WeightNormLinear<double>>(5, 4, false, WeightNormDim::Rows, rng));
  s.add(std::make_unique<ReLU<double>>());
  s.add(std::make_unique<Linear<double>>(4, 3, true, rng));
  ASSERT_EQ(s.fuse_relus(), 2);
  EXPECT_GRADIENTS_OK(s, Shape({7, 6}), 12);
}
