// The one place matrix products happen. float goes to oneDNN's sgemm (measured
// 210-300 GFLOP/s on the MLP's shapes here, where Debian's OpenBLAS mistakes the
// CPU for a Prescott); double, used only by gradient checks, to a plain loop.
#include <oneapi/dnnl/dnnl.h>

#include "normlab/error.hpp"
#include "normlab/kernels.hpp"
#include "normlab/profile.hpp"

namespace normlab {

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  const profile::Scope timer("sgemm");
  const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A,
                                      lda, B, ldb, beta, C, ldc);
  if (st != dnnl_success)
    fail("oneDNN sgemm failed (status ", static_cast<int>(st), ") for M=", M, " N=", N, " K=", K);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  auto a = [&](int64_t i, int64_t k) { return trans_a ? A[k * lda + i] : A[i * lda + k]; };
  auto b = [&](int64_t k, int64_t j) { return trans_b ? B[j * ldb + k] : B[k * ldb + j]; };
#pragma omp parallel for schedule(static) if (M * N * K > (1 << 18))
  for (int64_t i = 0; i < M; ++i) {
    double* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = beta == 0.0 ? 0.0 : beta * c[j];
    for (int64_t k = 0; k < K; ++k) {
      const double aik = alpha * a(i, k);
      for (int64_t j = 0; j < N; ++j) c[j] += aik * b(k, j);
    }
  }
}

}  // namespace normlab
