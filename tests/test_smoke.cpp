#include <gtest/gtest.h>
#include "normlab/layers.hpp"
TEST(Smoke, LinearShape) {
  normlab::Rng rng(1);
  normlab::Linear<float> l(3, 2, true, rng);
  normlab::Tensor<float> x({4, 3}, 1.0f);
  EXPECT_EQ(l.forward(x).shape(), (normlab::Shape{4, 2}));
}
