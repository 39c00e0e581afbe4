// Cross-entropy from logits and accuracy, as nn.CrossEntropyLoss (mean
// reduction) and torch.max / argmax compute them.
#pragma once
#include <cstdint>
#include <span>

#include "normlab/tensor.hpp"

namespace normlab {

// logits (N, K) row-major, labels (N) in [0, K). Returns the mean over the
// rows of -log softmax(logits)[label], with a stable log-softmax (the row max
// is subtracted before exp, so logits of 1e4 neither overflow nor lose the
// softmax). If dlogits != nullptr it is overwritten with d(loss)/d(logits) =
// (softmax - onehot) / N, shape (N, K); it may alias nothing else.
// Throws an Error naming the row and the label if a label is outside [0, K).
// The loss is accumulated in double for both T.
template <typename T>
double cross_entropy_forward_backward(const T* logits, const int32_t* labels, int64_t N, int64_t K,
                                      T* dlogits);

// Tensor form: logits must be (N, K) and labels hold N values; dlogits (if
// given) is resized to (N, K) (no allocation once it has that size).
template <typename T>
double cross_entropy(const Tensor<T>& logits, std::span<const int32_t> labels,
                     Tensor<T>* dlogits = nullptr);

// Index of the largest value in each row of logits (N, K), the first one on
// ties, and the first NaN if there is one (as torch.max / argmax).
template <typename T>
void argmax_rows(const T* logits, int64_t N, int64_t K, int32_t* out);

// How many rows have their argmax equal to the label.
template <typename T>
int64_t count_correct(const T* logits, const int32_t* labels, int64_t N, int64_t K);

}  // namespace normlab
