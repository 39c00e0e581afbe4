#include "normlab/loss.hpp"

#include <cmath>

#include "normlab/error.hpp"

namespace normlab {

// Per row: m = max_k x_k, s = sum_k exp(x_k - m), loss = m + log s - x_label,
// dlogits_k = (exp(x_k - m) / s - [k == label]) / N. Derivation: docs/loss.md.
template <typename T>
double cross_entropy_forward_backward(const T* logits, const int32_t* labels, int64_t N, int64_t K,
                                      T* dlogits) {
  if (N <= 0 || K <= 0)
    fail("cross_entropy: logits must be (N, K) with N, K > 0, got (", N, ", ", K, ")");
  for (int64_t n = 0; n < N; ++n)
    if (labels[n] < 0 || labels[n] >= K)
      fail("cross_entropy: label ", labels[n], " in row ", n, " is outside [0, ", K, ")");

  double total = 0.0;
  const T inv_n = T(1) / static_cast<T>(N);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * K;
    T m = x[0];
    for (int64_t k = 1; k < K; ++k) m = x[k] > m ? x[k] : m;
    double s = 0.0;
    if (dlogits) {
      T* d = dlogits + n * K;
      for (int64_t k = 0; k < K; ++k) {
        d[k] = std::exp(x[k] - m);
        s += d[k];
      }
      const T scale = static_cast<T>(1.0 / s) * inv_n;
      for (int64_t k = 0; k < K; ++k) d[k] *= scale;
      d[labels[n]] -= inv_n;
    } else {
      for (int64_t k = 0; k < K; ++k) s += std::exp(x[k] - m);
    }
    total += static_cast<double>(m) + std::log(s) - static_cast<double>(x[labels[n]]);
  }
  return total / static_cast<double>(N);
}

template <typename T>
double cross_entropy(const Tensor<T>& logits, std::span<const int32_t> labels, Tensor<T>* dlogits) {
  if (logits.rank() != 2)
    fail("cross_entropy: logits must be (N, K), got ", shape_str(logits.shape()));
  const int64_t N = logits.dim(0), K = logits.dim(1);
  if (static_cast<int64_t>(labels.size()) != N)
    fail("cross_entropy: ", labels.size(), " labels for ", N, " rows of logits");
  // Resize only on a new shape: even the temporary Shape would allocate.
  if (dlogits && (dlogits->rank() != 2 || dlogits->dim(0) != N || dlogits->dim(1) != K))
    dlogits->resize({N, K});
  return cross_entropy_forward_backward(logits.data(), labels.data(), N, K,
                                        dlogits ? dlogits->data() : nullptr);
}

template <typename T>
void argmax_rows(const T* logits, int64_t N, int64_t K, int32_t* out) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * K;
    int64_t best = 0;
    for (int64_t k = 0; k < K && !std::isnan(x[best]); ++k)
      if (x[k] > x[best] || std::isnan(x[k])) best = k;
    out[n] = static_cast<int32_t>(best);
  }
}

template <typename T>
int64_t count_correct(const T* logits, const int32_t* labels, int64_t N, int64_t K) {
  int64_t correct = 0;
  for (int64_t n = 0; n < N; ++n) {
    int32_t pred;
    argmax_rows(logits + n * K, 1, K, &pred);
    correct += pred == labels[n];
  }
  return correct;
}

#define NORMLAB_LOSS(T)                                                                           \
  template double cross_entropy_forward_backward(const T*, const int32_t*, int64_t, int64_t, T*); \
  template double cross_entropy(const Tensor<T>&, std::span<const int32_t>, Tensor<T>*);          \
  template void argmax_rows(const T*, int64_t, int64_t, int32_t*);                                \
  template int64_t count_correct(const T*, const int32_t*, int64_t, int64_t);
NORMLAB_LOSS(float)
NORMLAB_LOSS(double)
#undef NORMLAB_LOSS

}  // namespace normlab
