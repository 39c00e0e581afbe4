// GroupNorm kernels over a general (N, C, S) view: N samples, C channels in G
// groups of C / G consecutive channels, S = the product of the trailing dims
// (1 for (N, C), L for (N, C, L), H * W for (N, C, H, W)). Statistics are per
// (sample, group): mean and biased variance over the group's C / G * S
// contiguous values. The affine map is per channel:
//   y[n, c, s] = (x[n, c, s] - mean[n, g]) * rstd[n, g] * gamma[c] + beta[c],
// rstd = 1 / sqrt(var + eps), g = c / (C / G). InstanceNorm is G = C.
// Conventions as in normlab/kernels.hpp: parameter gradients accumulate (+=),
// dx is overwritten (null skips it), gamma/beta may be null (no affine).
// Derivation of the backward: docs/derivations.md ("GroupNorm").
#pragma once
#include <cstdint>

namespace normlab {

// Writes y (N,C,S), mean (N*G), rstd (N*G) and, if non-null, the biased
// variance var (N*G). C must be a multiple of G (the layers check it).
template <typename T>
void groupnorm_forward(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, int64_t S, int64_t G, T eps);
// Backward of the forward above (statistics depend on x), from its saved mean
// and rstd: dx (N,C,S) =; dgamma (C) +=; dbeta (C) +=.
template <typename T>
void groupnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t S, int64_t G);

namespace ref {
// Plain loops in double, two passes for the variance: the definitions the
// fast kernels are tested against.
template <typename T>
void groupnorm_forward(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, int64_t S, int64_t G, T eps);
template <typename T>
void groupnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t S, int64_t G);
}  // namespace ref

}  // namespace normlab
