// The one place matrix products happen. float goes to oneDNN's sgemm (measured
// 210-300 GFLOP/s on the MLP's shapes here, where Debian's OpenBLAS mistakes the
// CPU for a Prescott); double, used only by gradient checks, to a plain loop.
// Called inside a parallel region (the fused layer kernels), it runs on the
// calling thread alone.
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include "kernels/parallel_slices.hpp"
#include "normlab/error.hpp"
#include "normlab/kernels.hpp"
#include "normlab/profile.hpp"

namespace normlab {

namespace {

void check_status(dnnl_status_t st, int64_t M, int64_t N, int64_t K) {
  if (st != dnnl_success)
    fail("oneDNN sgemm failed (status ", static_cast<int>(st), ") for M=", M, " N=", N, " K=", K);
}

// oneDNN's sgemm on the calling thread alone. Inside a parallel region it is
// so already; outside one, oneDNN would start its own threads for the call
// (and allocate for them), so the thread count is 1 for the call.
void sgemm_one_thread(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) {
  const bool serial_already = omp_in_parallel();
  const int saved = omp_get_max_threads();
  if (!serial_already) omp_set_num_threads(1);
  const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A,
                                      lda, B, ldb, beta, C, ldc);
  if (!serial_already) omp_set_num_threads(saved);
  check_status(st, M, N, K);
}

}  // namespace

// Threads split C into slices (by columns when each gets at least 64, else by
// rows) and each multiplies its slice alone. Measured on the MLP's shapes
// (docs/training-performance.md): faster than oneDNN's own threading, and no
// allocation per call.
template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  const profile::Scope timer("sgemm");
  const int threads = detail::slice_threads(2.0 * static_cast<double>(M) * N * K);
  const bool by_cols = N >= 64 * threads;
  if (threads == 1 || (!by_cols && M < 16 * threads)) {
    sgemm_one_thread(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  dnnl_status_t status = dnnl_success;
#pragma omp parallel num_threads(threads)
  {
    const auto [b, e] = detail::slice_of(by_cols ? N : M, by_cols ? 16 : 8, omp_get_thread_num(),
                                         omp_get_num_threads());
    dnnl_status_t st = dnnl_success;
    if (b < e && by_cols)
      st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, e - b, K, alpha, A, lda,
                      trans_b ? B + b * ldb : B + b, ldb, beta, C + b, ldc);
    else if (b < e)
      st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', e - b, N, K, alpha,
                      trans_a ? A + b : A + b * lda, lda, B, ldb, beta, C + b * ldc, ldc);
    if (st != dnnl_success) {
#pragma omp atomic write
      status = st;
    }
  }
  check_status(status, M, N, K);
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
