// RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"), as
// torch.nn.RMSNorm (PyTorch >= 2.4): its kernels and its layer class.
#pragma once
#include <cstdint>
#include <optional>

#include "normlab/layer.hpp"

namespace normlab {

// ---- Kernels: RMSNorm over the last D of x (N, D) ----
// y = x * rstd * gamma with rstd = 1 / sqrt(mean(x^2) + eps) per row; gamma (D)
// may be null (no affine). Writes rstd (N). The sum of squares is taken in
// double, so rows of any finite float values are normalized right (PyTorch's
// float kernel squares in float: rows with |x| above ~1.8e19 give y = 0 there;
// docs/model-spec.md). Backward (docs/derivations.md), with g = dy * gamma and
// xhat = x * rstd: dx = rstd * (g - xhat * mean(g * xhat)) (=, null skips it),
// dgamma += dy * xhat (null skips it).
template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* gamma, int64_t N, int64_t D, T eps);
template <typename T>
void rmsnorm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* rstd, const T* gamma,
                      int64_t N, int64_t D);

namespace ref {
// The definitions the fast kernels are tested against: plain loops in double.
template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* gamma, int64_t N, int64_t D, T eps);
template <typename T>
void rmsnorm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* rstd, const T* gamma,
                      int64_t N, int64_t D);
}  // namespace ref

struct RMSNormOptions {
  // nullopt (PyTorch's eps=None): the machine epsilon of the computation type,
  // torch.finfo(float32).eps = 1.19e-7 for float, finfo(float64).eps =
  // 2.2e-16 for double (PyTorch's docstring: "the machine epsilon of the
  // opmath type"). A given eps must be >= 0 (finite).
  std::optional<double> eps;
  bool elementwise_affine = true;
};

// torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True):
// normalizes over the trailing dims given by `normalized_shape` (rank >= 1,
// every dim > 0): y = x / sqrt(mean(x^2) + eps) * weight, the mean over those
// dims. Input (*, normalized_shape), output the same shape.
// State: weight (normalized_shape), initialised to ones, if elementwise_affine
// (no bias: RMSNorm does not centre).
// Errors (normlab::Error naming the layer and numbers): an empty or
// non-positive normalized_shape, a negative or NaN eps, an input that does not
// end in normalized_shape.
template <typename T>
class RMSNorm : public Layer<T> {
 public:
  explicit RMSNorm(Shape normalized_shape, RMSNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  // The eps the kernels use: the given one or the machine epsilon of T.
  T eps() const;

  Tensor<T> weight, dweight;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  Shape normalized_shape_;
  int64_t D_;
  RMSNormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> y_, dx_, rstd_;
};

}  // namespace normlab
