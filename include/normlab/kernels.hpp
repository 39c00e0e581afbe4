// The math of normlab: free functions over contiguous row-major buffers.
//
// Shape letters, project-wide: N rows (batch), D features, C channels,
// L length, O/I output/input features of a weight matrix.
//
// Gradient convention (one rule for every kernel):
//   * parameter gradients ACCUMULATE (+=), so a training step zeroes them once;
//   * the input gradient dx is OVERWRITTEN (=); pass dx = nullptr to skip it.
// Forward passes of the norms save per-row / per-channel mean and rstd =
// 1/sqrt(var + eps) for backward; they never save the normalized tensor.
// Variances are computed in two passes over the data (mean first, then the
// centred sum of squares), so inputs like randn*0.01 + 1e4 normalize correctly.
// Derivations of every backward: docs/derivations.md.
//
// Each op has a plain reference in namespace ref (the definition) and a fast
// version (the default names) that is tested against it.
#pragma once
#include <cstdint>

namespace normlab {

// C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, row-major.
// float goes to oneDNN's sgemm; double (gradient checks) to a plain loop.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// ---- Linear: y (N,O) = x (N,I) @ w (O,I)^T + b (O) ----
template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t I, int64_t O);
// dx (N,I) = dy @ w; dw (O,I) += dy^T @ x; db (O) += sum_n dy. b/db may be null.
template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t I,
                     int64_t O);

// ---- ReLU over n elements; backward reads the forward output y ----
// As PyTorch: y = x < 0 ? 0 : x (NaN and -0.0 pass), dx = y <= 0 ? 0 : dy (a NaN y passes dy).
template <typename T>
void relu_forward(T* y, const T* x, int64_t n);
template <typename T>
void relu_backward(T* dx, const T* dy, const T* y, int64_t n);

// ---- LayerNorm over the last D of x (N,D) ----
// y = (x - mean) * rstd * gamma + beta; gamma/beta (D) may be null (no affine / no bias).
// Writes mean (N), rstd (N).
template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps);
// dx (N,D) =; dgamma (D) +=; dbeta (D) +=. gamma/dgamma/dbeta may be null.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D);

// ---- BatchNorm over x (N,C,L): statistics per channel over N*L values (L=1 for (N,C)) ----
// Training: y = (x - mean_c) * rstd_c * gamma_c + beta_c with batch statistics.
// Writes mean (C), rstd (C) and, if non-null, the biased batch variance var (C).
template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps);
// Eval: the same affine map with given statistics (running_mean, running_var).
template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps);
// Backward of the training forward (batch statistics depend on x): dx =, dgamma +=, dbeta +=.
template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L);
// Backward when the statistics are constants (eval mode): dx = dy * gamma * rstd.
template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L);

// ---- BatchNorm followed by a ReLU, fused (BatchNorm1d/2d::fuse_relu) ----
// Forward: y = relu(BatchNorm(x)) in the same sweep that writes y (relu as
// relu_forward: NaN and -0.0 pass); train and eval, arguments as above.
// Backward (train: batch statistics; !train: eval's constant statistics): as
// the batchnorm_backward_* above on dy masked by the fused forward's output y
// (dy counts except where y <= 0, as relu_backward: a NaN y passes dy), in the
// same sweeps. Results equal the unfused kernels', bit for bit.
template <typename T>
void batchnorm_relu_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                  const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_relu_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                                 const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_relu_backward(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* y,
                             const T* x, const T* mean, const T* rstd, const T* gamma, int64_t N,
                             int64_t C, int64_t L);

// ---- WeightNorm: w (O,I) = g * v / ||v|| ----
// per_row: one norm and one g per output row (PyTorch dim=0), norm (O), g (O);
// otherwise one norm over the whole matrix (dim=None), norm (1), g (1).
template <typename T>
void weightnorm_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I, bool per_row);
// From dw: dg +=, dv +=.
template <typename T>
void weightnorm_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                         int64_t O, int64_t I, bool per_row);

// PyTorch's dim=1 for a Linear weight: one norm and one g per input column,
// w[o,i] = g[i] * v[o,i] / ||v[:,i]||; norm (I), g (I) (stored (1, I)).
template <typename T>
void weightnorm_dim1_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I);
template <typename T>
void weightnorm_dim1_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                              int64_t O, int64_t I);

// Every norm above is computed without overflow or underflow (float: squares
// summed in double; double: scaled as BLAS nrm2), src/kernels/vector_norm.hpp.

// The seed-001 notebook's WeightNormalizedLinear: a full matrix g (O,I) and the
// norm over dim 0, i.e. per input column: w[o,i] = g[o,i] * v[o,i] / ||v[:,i]||, norm (I).
template <typename T>
void weightnorm_columns_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I);
template <typename T>
void weightnorm_columns_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                                 int64_t O, int64_t I);

// ---- WeightNormLinear with per-row norms, fused, without forming w ----
// With w = g v / ||v|| per row (PyTorch dim=0), x w^T = (x v^T) * s column by
// column, s_o = g_o / ||v_o||, so the layer never writes w: the forward keeps
// z = x v^T (N,O) and s (O) for the backward, where dw = dy^T x enters only
// through (dy * s)^T x and the row dots dw_o . v_o = sum_n dy[n,o] z[n,o]
// (derivation: docs/derivations.md). Each thread owns a slice of output
// features o (norms, its columns of z and y, its rows of dv) and of dx's
// columns. Results equal weightnorm_forward(per_row) + linear_forward and
// linear_backward + weightnorm_backward(per_row) up to rounding.
// Forward: y (N,O) = z * s + b (b may be null), or relu(z * s + b) with relu
// (a following ReLU fused in, NaN kept as in relu_forward); writes z (N,O),
// norm (O), scale (O) = s.
template <typename T>
void weightnorm_linear_forward(T* y, T* z, T* norm, T* scale, const T* x, const T* v, const T* g,
                               const T* b, int64_t N, int64_t I, int64_t O, bool relu = false);
// Backward from dy (N,O), with z, norm, scale from the forward: dx (N,I) = dy w
// (null skips it); dv (O,I) +=, dg (O) +=, db (O) += (null: no bias).
// relu_y: the forward's output if it applied the ReLU (dy then counts except
// where relu_y <= 0, as in relu_backward: a NaN output passes dy), else null.
// dys (N,O) and dot (O) are scratch, overwritten.
template <typename T>
void weightnorm_linear_backward(T* dx, T* dv, T* dg, T* db, T* dys, T* dot, const T* dy, const T* x,
                                const T* z, const T* v, const T* g, const T* norm, const T* scale,
                                int64_t N, int64_t I, int64_t O, const T* relu_y = nullptr);

namespace ref {
// Plain, obviously-correct versions with the same contracts as above.
template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps);
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D);
template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L);
template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L);
// The fused BatchNorm + ReLU by definition: BatchNorm, then the ReLU; the
// ReLU's backward (dy masked by y), then BatchNorm's.
template <typename T>
void batchnorm_relu_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                  const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_relu_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                                 const T* beta, int64_t N, int64_t C, int64_t L, T eps);
template <typename T>
void batchnorm_relu_backward(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* y,
                             const T* x, const T* mean, const T* rstd, const T* gamma, int64_t N,
                             int64_t C, int64_t L);
}  // namespace ref

}  // namespace normlab
