// Kernels of the BatchNorm variants (include/normlab/bn_family.hpp): Batch
// Renormalization, mean-only BatchNorm; Ghost BatchNorm is BatchNorm's kernels
// on each virtual batch. Same conventions as normlab/kernels.hpp: buffers
// (N,C,L) row-major (L = 1 for (N,C)), statistics per channel over N*L values
// summed in double, parameter gradients accumulate (+=), dx is overwritten
// (nullptr skips it). Each has a plain reference in namespace ref.
// Derivations: docs/derivations.md ("BatchNorm variants").
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace normlab {

// Batch Renormalization's correction for one channel (Ioffe 2017, Algorithm 1),
// from the batch mean mB and biased variance vB and the running statistics:
//   sigma = sqrt(running_var + eps), sigma_B = sqrt(vB + eps),
//   r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mB - running_mean) / sigma, -dmax, dmax).
// rmax = 1 gives r = 1 and dmax = 0 gives d = 0 exactly (BatchNorm), whatever
// the statistics. NaN statistics give NaN.
inline void batchrenorm_correction(double& r, double& d, double mB, double vB, double running_mean,
                                   double running_var, double rmax, double dmax, double eps) {
  const double sigma = std::sqrt(running_var + eps);
  r = rmax == 1 ? 1.0 : std::clamp(std::sqrt(vB + eps) / sigma, 1.0 / rmax, rmax);
  d = dmax == 0 ? 0.0 : std::clamp((mB - running_mean) / sigma, -dmax, dmax);
}

// ---- Batch Renormalization, training ----
// y = gamma * ((x - mean_B) * rstd_B * r + d) + beta with r, d from
// batchrenorm_correction (gamma/beta may be null). Writes the batch mean (C),
// rstd_B (C), the biased batch variance var (C, may be null), r (C), d (C).
// Eval is batchnorm_forward_eval with the running statistics.
template <typename T>
void batchrenorm_forward_train(T* y, T* mean, T* rstd, T* var, T* r, T* d, const T* x,
                               const T* gamma, const T* beta, const T* running_mean,
                               const T* running_var, double rmax, double dmax, int64_t N, int64_t C,
                               int64_t L, T eps);
// Backward with r and d held constant (the paper's stop_gradient): BatchNorm's
// training backward with gamma * r for gamma, and
// dgamma += sum dy * (xhat * r + d), dbeta += sum dy.
template <typename T>
void batchrenorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                                const T* rstd, const T* r, const T* d, const T* gamma, int64_t N,
                                int64_t C, int64_t L);

// ---- Mean-only BatchNorm (Salimans & Kingma 2016, section 2.2) ----
// Training: y = x - mean_B + bias (bias may be null); writes mean_B (C).
template <typename T>
void meanonly_batchnorm_forward_train(T* y, T* mean, const T* x, const T* bias, int64_t N,
                                      int64_t C, int64_t L);
// Eval: y = x - mean + bias with a given mean (running_mean).
template <typename T>
void meanonly_batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* bias, int64_t N,
                                     int64_t C, int64_t L);
// Backward: train dx = dy - mean_c(dy) (the batch mean depends on x), eval
// dx = dy; dbias += sum dy (dbias may be null).
template <typename T>
void meanonly_batchnorm_backward(bool train, T* dx, T* dbias, const T* dy, int64_t N, int64_t C,
                                 int64_t L);

// ---- Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, section 4) ----
// BatchNorm's training kernels on each virtual batch of K consecutive samples
// (G = ceil(N / K), the last holds the remainder): mean, rstd, var are (G, C).
// With G at least the thread count the threads take whole virtual batches
// (each BatchNorm call then runs on its thread); else the virtual batches go
// one after the other with all threads. ref::batchnorm_forward_train is the
// reference, applied per virtual batch.
template <typename T>
void ghost_batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                   const T* beta, int64_t N, int64_t C, int64_t L, int64_t K,
                                   T eps);
// dx =, dgamma +=, dbeta += (summed over the virtual batches). exact (G, may be
// null): virtual batches whose backward ref::batchnorm_backward_train computes
// (their forward statistics overflowed in the fast kernel).
template <typename T>
void ghost_batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                                    const T* mean, const T* rstd, const T* gamma, int64_t N,
                                    int64_t C, int64_t L, int64_t K, const char* exact);

// ghost_batchnorm_backward_train's (N,C) kernel with the threads taking whole
// virtual batches (batchnorm_fast.cpp); called by it.
template <typename T>
void ghost_batchnorm_backward_rows(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                                   const T* mean, const T* rstd, const T* gamma, int64_t N,
                                   int64_t C, int64_t K, const char* exact);

namespace ref {
template <typename T>
void batchrenorm_forward_train(T* y, T* mean, T* rstd, T* var, T* r, T* d, const T* x,
                               const T* gamma, const T* beta, const T* running_mean,
                               const T* running_var, double rmax, double dmax, int64_t N, int64_t C,
                               int64_t L, T eps);
template <typename T>
void batchrenorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                                const T* rstd, const T* r, const T* d, const T* gamma, int64_t N,
                                int64_t C, int64_t L);
template <typename T>
void meanonly_batchnorm_forward_train(T* y, T* mean, const T* x, const T* bias, int64_t N,
                                      int64_t C, int64_t L);
template <typename T>
void meanonly_batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* bias, int64_t N,
                                     int64_t C, int64_t L);
template <typename T>
void meanonly_batchnorm_backward(bool train, T* dx, T* dbias, const T* dy, int64_t N, int64_t C,
                                 int64_t L);
}  // namespace ref

}  // namespace normlab
