// MaxPool2d's fast 2x2 / stride 2 kernels (src/kernels/pool2d_fast.cpp)
// against the reference loops (src/kernels/pool2d_ref.cpp), bit for bit, in
// float and double: odd and even planes, NaN (the last NaN of a window is its
// argmax), +-inf, -inf windows, ties (the first wins), -0.0 gradients, and a
// batch large enough to run on several threads.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "normlab/pool_kernels.hpp"
#include "normlab/rng.hpp"

namespace normlab {
namespace {

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <typename T>
void check_against_ref(int64_t P, int64_t H, int64_t W, uint64_t seed) {
  const int64_t OH = H / 2, OW = W / 2;
  Rng rng(seed);
  std::vector<T> x(static_cast<size_t>(P * H * W)), dy(static_cast<size_t>(P * OH * OW));
  rng.fill_uniform(x.data(), static_cast<int64_t>(x.size()), -2.0, 2.0);
  rng.fill_uniform(dy.data(), static_cast<int64_t>(dy.size()), -1.0, 1.0);
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  // Specials: ties on a coarse grid, NaN, +-inf, whole -inf windows, -0.0 gradients.
  for (size_t i = 0; i < x.size(); ++i) {
    if (i % 7 == 0) x[i] = std::round(x[i]);
    if (i % 31 == 3) x[i] = nan;
    if (i % 37 == 5) x[i] = inf;
    if (i % 41 == 6) x[i] = -inf;
  }
  if (H >= 2 && W >= 2) x[0] = x[1] = x[W] = x[W + 1] = -inf;
  for (size_t i = 0; i < dy.size(); i += 13) dy[i] = T(-0.0);
  const MaxPoolGeom g{H, W, OH, OW, 2, 2, 2, 2, 0, 0, 1, 1};
  std::vector<T> y(dy.size()), y_ref(dy.size()), dx(x.size(), T(7)), dx_ref(x.size());
  std::vector<int32_t> am(dy.size()), am_ref(dy.size());
  maxpool2x2_forward<T>(y.data(), am.data(), x.data(), P, H, W);
  ref::maxpool2d_forward<T>(y_ref.data(), am_ref.data(), x.data(), P, g);
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_TRUE(same_bits(y[i], y_ref[i]) || (std::isnan(y[i]) && std::isnan(y_ref[i])))
        << "y[" << i << "] " << y[i] << " vs " << y_ref[i] << " (P=" << P << " H=" << H
        << " W=" << W << ")";
    ASSERT_EQ(am[i], am_ref[i]) << "argmax[" << i << "]";
  }
  maxpool2x2_backward<T>(dx.data(), dy.data(), am.data(), P, H, W);
  ref::maxpool2d_backward<T>(dx_ref.data(), dy.data(), am_ref.data(), P, g);
  for (size_t i = 0; i < dx.size(); ++i)
    ASSERT_TRUE(same_bits(dx[i], dx_ref[i])) << "dx[" << i << "] " << dx[i] << " vs " << dx_ref[i]
                                             << " (P=" << P << " H=" << H << " W=" << W << ")";
}

TEST(MaxPool2x2Kernels, MatchReferenceBitForBit) {
  for (auto [P, H, W] : {std::array<int64_t, 3>{1, 2, 2},
                         {3, 5, 7},
                         {4, 6, 6},
                         {2, 7, 4},
                         {2, 1, 5},
                         {5, 26, 26},
                         {3, 11, 11},
                         {64, 26, 26}}) {
    check_against_ref<float>(P, H, W, 1 + P * H * W);
    check_against_ref<double>(P, H, W, 2 + P * H * W);
  }
}

TEST(MaxPool2x2Kernels, NanIsTheMaximumAndTheLastNanTheArgmax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // One 2x2 window: 1, NaN / 5, NaN: PyTorch returns NaN at the second NaN (index 3).
  const float x[4] = {1.0f, nan, 5.0f, nan};
  float y;
  int32_t am;
  maxpool2x2_forward<float>(&y, &am, x, 1, 2, 2);
  EXPECT_TRUE(std::isnan(y));
  EXPECT_EQ(am, 3);
  const float tie[4] = {2.0f, 2.0f, 1.0f, 2.0f};
  maxpool2x2_forward<float>(&y, &am, tie, 1, 2, 2);
  EXPECT_EQ(y, 2.0f);
  EXPECT_EQ(am, 0);
}

}  // namespace
}  // namespace normlab
