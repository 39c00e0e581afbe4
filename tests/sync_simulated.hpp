// A synchronised norm layer (SyncBatchNorm, SyncBatchRenorm1d) over K
// simulated ranks (run_simulated_ranks: K threads, no mpirun) seen as one
// Layer<double> over the whole batch, for the gradient checker and the
// equivalence tests of tests/test_syncbn.cpp and tests/test_syncbn_family.cpp.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "normlab/distributed.hpp"
#include "normlab/layer.hpp"
#include "normlab/tensor.hpp"

namespace normlab::testing {

// Rows [N r / K, N (r + 1) / K) of x (N, ...): rank r's shard, as the trainer cuts it.
template <typename T>
Tensor<T> shard(const Tensor<T>& x, int r, int K) {
  const int64_t N = x.dim(0), lo = N * r / K, hi = N * (r + 1) / K, row = N ? x.numel() / N : 0;
  Shape s = x.shape();
  s[0] = hi - lo;
  Tensor<T> out(s);
  std::copy(x.data() + lo * row, x.data() + hi * row, out.data());
  return out;
}

// K ranks of a synchronised layer L (SyncBatchNorm or SyncBatchRenorm1d) seen
// as one Layer<double> over the whole batch: parameters copied into every rank,
// their gradients summed over the ranks (the trainer's all-reduce), buffers
// rank 0's (all ranks agree; checked).
template <typename L>
class Simulated : public Layer<double> {
 public:
  Simulated(int K, const std::function<std::unique_ptr<L>()>& make, bool affine, bool track)
      : K_(K), affine_(affine), track_(track) {
    for (int r = 0; r < K; ++r) ranks_.push_back(make());
    L& r0 = *ranks_[0];
    weight = r0.weight, bias = r0.bias, dweight = r0.dweight, dbias = r0.dbias;
    running_mean = r0.running_mean, running_var = r0.running_var;
  }
  std::string name() const override { return "Simulated" + ranks_[0]->name(); }
  Shape output_shape(const Shape& in) const override { return ranks_[0]->output_shape(in); }
  void set_training(bool on) override {
    training_ = on;
    for (auto& r : ranks_) r->set_training(on);
  }
  void set_input_grad(bool on) override {
    input_grad_ = on;
    for (auto& r : ranks_) r->set_input_grad(on);
  }
  std::vector<StateEntry<double>> state() override {
    std::vector<StateEntry<double>> s;
    if (affine_) s.push_back({"weight", &weight, &dweight}), s.push_back({"bias", &bias, &dbias});
    if (track_) {
      s.push_back({"running_mean", &running_mean});
      s.push_back({"running_var", &running_var});
    }
    return s;
  }
  const Tensor<double>& backward(const Tensor<double>& dy) override {
    for (int r = 0; r < K_; ++r) dys_[r] = shard(dy, r, K_);
    run_simulated_ranks(K_, [&](Communicator& c) {
      auto& l = *ranks_[c.rank()];
      l.zero_grad();
      l.set_communicator(&c);
      dxs_[c.rank()] = l.backward(dys_[c.rank()]);
    });
    if (affine_)
      for (auto& r : ranks_)
        for (int64_t c = 0; c < weight.numel(); ++c)
          dweight[c] += r->dweight[c], dbias[c] += r->dbias[c];
    if (!input_grad_) {
      dx_.resize({0});
      return dx_;
    }
    dx_.resize(x_->shape());
    double* out = dx_.data();
    for (auto& d : dxs_) out = std::copy(d.data(), d.data() + d.numel(), out);
    return dx_;
  }
  Tensor<double> weight, bias, dweight, dbias, running_mean, running_var;
  int64_t num_batches_tracked = 0;
  std::vector<std::unique_ptr<L>> ranks_;

 protected:
  const Tensor<double>& forward_impl(const Tensor<double>& x) override {
    x_ = &x;
    xs_.resize(K_), ys_.resize(K_), dys_.resize(K_), dxs_.resize(K_);
    for (int r = 0; r < K_; ++r) {
      xs_[r] = shard(x, r, K_);
      auto& l = *ranks_[r];
      if (affine_) l.weight = weight, l.bias = bias;
      if (track_) {
        l.running_mean = running_mean, l.running_var = running_var;
        l.num_batches_tracked = num_batches_tracked;
      }
    }
    run_simulated_ranks(K_, [&](Communicator& c) {
      auto& l = *ranks_[c.rank()];
      l.set_communicator(&c);
      ys_[c.rank()] = l.forward(xs_[c.rank()]);
    });
    if (track_) {
      for (int r = 1; r < K_; ++r)
        for (int64_t c = 0; c < running_mean.numel(); ++c) {
          EXPECT_EQ(ranks_[r]->running_mean[c], ranks_[0]->running_mean[c]);
          EXPECT_EQ(ranks_[r]->running_var[c], ranks_[0]->running_var[c]);
        }
      running_mean = ranks_[0]->running_mean;
      running_var = ranks_[0]->running_var;
      num_batches_tracked = ranks_[0]->num_batches_tracked;
    }
    y_.resize(x.shape());
    double* out = y_.data();
    for (auto& y : ys_) out = std::copy(y.data(), y.data() + y.numel(), out);
    return y_;
  }

 private:
  int K_;
  bool affine_, track_;
  const Tensor<double>* x_ = nullptr;
  std::vector<Tensor<double>> xs_, ys_, dys_, dxs_;
  Tensor<double> y_, dx_;
};

}  // namespace normlab::testing
