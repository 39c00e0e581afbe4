// The seed-001 notebook's own layers, exactly as written there, so the notebook
// can be reproduced next to the standard layers. They differ from PyTorch's:
//   NotebookWeightNormLinear: w = g * v / ||v||_dim0 with a full (out,in) matrix g
//     and the norm taken per input column. State: g, weight (= v), bias.
//   NotebookBatchNorm: normalizes over the WHOLE tensor (one mean, one variance),
//     scalar gamma/beta, eps 1e-6, the same in train and eval (no running stats).
//   NotebookLayerNorm: per row, scalar gamma/beta, eps 1e-6.
// gamma and beta start U(0,1), as the notebook's torch.nn.init.uniform_ does.
#pragma once
#include "normlab/layer.hpp"
#include "normlab/rng.hpp"

namespace normlab {

template <typename T>
class NotebookWeightNormLinear : public Layer<T> {
 public:
  NotebookWeightNormLinear(int64_t in, int64_t out, bool bias, Rng& rng);
  // Without an Rng: g, weight and bias all zeros, for parameters loaded right
  // after. Until then the output is NaN (the column norms of a zero v are 0).
  NotebookWeightNormLinear(int64_t in, int64_t out, bool bias = true);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> g, weight, bias, dg, dweight, dbias;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  int64_t in_, out_;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> w_, dw_, norm_, y_, dx_;
};

// Normalizes groups of `group` consecutive values with scalar gamma/beta:
// group = all values (NotebookBatchNorm) or one row (NotebookLayerNorm).
template <typename T>
class NotebookScalarNorm : public Layer<T> {
 public:
  enum class Over { Tensor, Rows };
  NotebookScalarNorm(Over over, Rng& rng);
  // Without an Rng: gamma = beta = 0 (y = 0), for parameters loaded right after.
  explicit NotebookScalarNorm(Over over);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> beta, gamma, dbeta, dgamma;  // (1) each; the notebook registers beta first

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;  // output_shape's checks, without the copy
  Over over_;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> xhat_, y_, dxhat_, dx_, mean_, rstd_;
};

}  // namespace normlab
