// Tensor::bind: a tensor reading and writing a share of a flat block (as an
// optimizer binds every parameter and gradient). A bound tensor must stay
// where it is bound (or say loudly that it cannot), and the block must live
// exactly as long as a tensor uses it: an early free is what ASan would catch.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "normlab/error.hpp"
#include "normlab/tensor.hpp"

using namespace normlab;

namespace {

std::shared_ptr<float[]> block_of(int64_t n, float fill) {
  std::shared_ptr<float[]> b(new float[n]);
  for (int64_t i = 0; i < n; ++i) b[i] = fill;
  return b;
}

// (2, 3) holding 0..5, bound at element 16 of a 32-element block of -1s.
Tensor<float> bound_tensor(const std::shared_ptr<float[]>& block) {
  Tensor<float> t({2, 3});
  for (int64_t i = 0; i < 6; ++i) t[i] = static_cast<float>(i);
  t.bind(block, block.get() + 16);
  return t;
}

void expect_error(const auto& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

}  // namespace

TEST(TensorBinding, BoundTensorReadsAndWritesTheBlock) {
  auto block = block_of(32, -1.f);
  Tensor<float> t = bound_tensor(block);
  EXPECT_TRUE(t.bound());
  EXPECT_EQ(t.data(), block.get() + 16);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(block[16 + i], static_cast<float>(i));
  EXPECT_EQ(block[15], -1.f);  // the neighbours are left alone
  EXPECT_EQ(block[22], -1.f);
  block[17] = 42.f;
  EXPECT_EQ(t[1], 42.f);
  t[0] = 7.f;
  EXPECT_EQ(block[16], 7.f);
  t.fill(3.f);
  EXPECT_EQ(block[21], 3.f);
  EXPECT_EQ(block[22], -1.f);
  EXPECT_EQ(t.span().data(), block.get() + 16);
  EXPECT_EQ(t.span().size(), 6u);
}

TEST(TensorBinding, SameCountResizeKeepsTheBindingOtherCountsThrow) {
  auto block = block_of(32, 0.f);
  Tensor<float> t = bound_tensor(block);
  t.resize({3, 2});
  t.reshape({6});
  t.resize(Shape{1, 6});
  t.resize_last(Shape{6, 4}, 1);
  EXPECT_EQ(t.shape(), (Shape{6, 1}));
  EXPECT_EQ(t.data(), block.get() + 16);
  EXPECT_EQ(t[5], 5.f);
  expect_error([&] { t.resize({4, 4}); }, {"(6, 1)", "(4, 4)", "bound", "6 elements"});
  expect_error([&] { t.resize(Shape{7}); }, {"(7)", "bound"});
  expect_error([&] { t.resize_last(Shape{2, 5}, 2); }, {"(2, 2)", "bound"});
  // A refused resize leaves the tensor as it was.
  EXPECT_EQ(t.shape(), (Shape{6, 1}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.data(), block.get() + 16);
  EXPECT_TRUE(t.bound());
}

TEST(TensorBinding, AssignmentCopiesIntoTheBlock) {
  auto block = block_of(32, 0.f);
  Tensor<float> t = bound_tensor(block);
  const Tensor<float> other({3, 2}, 5.f);
  t = other;  // copy
  EXPECT_EQ(t.data(), block.get() + 16);
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(block[21], 5.f);
  EXPECT_EQ(other.data()[0], 5.f);
  t = Tensor<float>({6}, 2.f);  // move from a temporary
  EXPECT_EQ(t.data(), block.get() + 16);
  EXPECT_EQ(block[16], 2.f);
  expect_error([&] { t = Tensor<float>({5}, 9.f); }, {"(5)", "(6)", "element counts"});
  EXPECT_EQ(block[16], 2.f);
  EXPECT_EQ(t.shape(), (Shape{6}));
  // Between two bound tensors: elements copied, each stays where it is.
  auto block2 = block_of(8, 0.f);
  Tensor<float> u({6}, 4.f);
  u.bind(block2, block2.get() + 1);
  t = std::move(u);
  EXPECT_EQ(t.data(), block.get() + 16);
  EXPECT_EQ(block[20], 4.f);
  EXPECT_EQ(u.data(), block2.get() + 1);
}

TEST(TensorBinding, CopiesOwnTheirStorageMovesTakeTheBinding) {
  auto block = block_of(32, 0.f);
  Tensor<float> t = bound_tensor(block);
  Tensor<float> copy(t);
  EXPECT_FALSE(copy.bound());
  EXPECT_NE(copy.data(), t.data());
  EXPECT_EQ(copy[4], 4.f);
  copy[4] = -8.f;
  EXPECT_EQ(block[20], 4.f);
  copy.resize({100});  // an owning copy resizes freely
  Tensor<float> owner;
  owner = t;
  EXPECT_FALSE(owner.bound());
  EXPECT_NE(owner.data(), t.data());

  Tensor<float> moved(std::move(t));
  EXPECT_TRUE(moved.bound());
  EXPECT_EQ(moved.data(), block.get() + 16);
  EXPECT_FALSE(t.bound());
  EXPECT_EQ(t.numel(), 0);
  Tensor<float> target({3}, 1.f);  // owning: takes the binding along
  target = std::move(moved);
  EXPECT_TRUE(target.bound());
  EXPECT_EQ(target.data(), block.get() + 16);
  EXPECT_EQ(target.shape(), (Shape{2, 3}));
  EXPECT_FALSE(moved.bound());
  EXPECT_EQ(block.use_count(), 2);  // the test's and target's: no share was lost or doubled
}

TEST(TensorBinding, TheBlockLivesAsLongAsATensorUsesIt) {
  auto block = block_of(32, 0.f);
  const std::weak_ptr<float[]> watch = block;
  auto t = std::make_unique<Tensor<float>>(bound_tensor(block));
  block.reset();  // as an optimizer destroyed before the model
  EXPECT_FALSE(watch.expired());
  (*t)[5] += 1.f;  // still valid memory
  EXPECT_EQ((*t)[5], 6.f);
  t.reset();
  EXPECT_TRUE(watch.expired());
}

TEST(TensorBinding, BindingAgainMovesTheTensorAndDropsTheOldShare) {
  auto first = block_of(32, 0.f), second = block_of(8, 0.f);
  Tensor<float> t = bound_tensor(first);
  EXPECT_EQ(first.use_count(), 2);
  t.bind(second, second.get() + 2);
  EXPECT_EQ(first.use_count(), 1);
  EXPECT_EQ(second.use_count(), 2);
  EXPECT_EQ(t.data(), second.get() + 2);
  EXPECT_EQ(second[7], 5.f);
}

TEST(TensorBinding, ViewConstructorBindsWithoutCopying) {
  auto block = block_of(32, 1.5f);
  Tensor<float> v({4, 2}, block, block.get() + 8);
  EXPECT_TRUE(v.bound());
  EXPECT_EQ(v.numel(), 8);
  EXPECT_EQ(v[7], 1.5f);
  EXPECT_THROW(Tensor<float>({2}, nullptr, block.get()), Error);
}
