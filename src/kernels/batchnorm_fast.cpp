// The default BatchNorm kernels. Statistics are per channel, i.e. reductions
// over the rows of x, so the threads split the rows, not the channels:
//   (N,C), L = 1: each thread sums its rows per channel in one pass (shifted
//     sums for the forward, see forward_train_rows), the partial sums are
//     merged per channel, and a second pass over the thread's rows applies the
//     per-channel multiply-add. x is read twice, y written once.
//   (N,C,L), L > 1: each channel's N segments of L contiguous values belong to
//     one thread (OpenMP over channels); segment moments are Chan-merged.
// Large means stay exact by summing x - shift with a value of the data as the
// shift (the thread's first row, the channel's first value; see
// shifted_moments). Every statistic and gradient sum is accumulated in double
// (as PyTorch's CPU BatchNorm does). Every folded coefficient must be a usable
// float, and a fold is used only where bounds from those sums keep it from
// overflowing or, where no bound is at hand (eval, the backward's dx), where
// its outputs come out finite (norm_common.hpp: "Folding coefficients").
// Channels, rows or segments that fail are computed as ref:: does. Derivations:
// docs/derivations.md; why: docs/performance.md; numerics: docs/numerics.md.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/bn_family_kernels.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {
namespace {

using detail::chan_merge;
using detail::fold_big;
using detail::fold_coeff_ok;
using detail::fold_product_ok;

// A ReLU fused after the norm (BatchNorm1d/2d::fuse_relu), on scalars or on
// whole vectors, as PyTorch's clamp_min and threshold_backward (relu.cpp): a
// NaN stays NaN (v < 0 is false), and dy is masked only where the output is
// <= 0, so a NaN output passes dy. With Relu false both are the identity.
template <bool Relu, typename V>
V maybe_relu(V v) {
  if constexpr (Relu)
    return v < V{} ? V{} : v;
  else
    return v;
}
template <bool Relu, typename V>
V masked_dy(V dy, V y) {
  if constexpr (Relu)
    return y <= V{} ? V{} : dy;
  else
    return dy;
}

// The training forward's map, y = ((x - m) * r) * gamma + beta, in double as
// ref:: computes it: for a channel whose folded coefficients fail their bounds.
template <typename T>
T exact_y(T x, double m, double r, const T* gamma, const T* beta, int64_t c) {
  double out = (x - m) * r;
  if (gamma) out *= gamma[c];
  if (beta) out += beta[c];
  return static_cast<T>(out);
}

// Coefficients of y = (x - shift) * a + b for a channel with exact mean m and
// M2 = sum (x - m)^2: shift = m rounded to T (x - shift is exact near the mean,
// the rounding goes into b). Returns whether the fold is safe in T: every
// |x - shift| <= sqrt(M2) + |m - shift| times |a|, and b, stay below fold_big.
template <typename T>
bool fold_forward(T& shift, T& a, T& b, double m, double m2, double r, const T* gamma,
                  const T* beta, int64_t c) {
  const double ac = gamma ? r * gamma[c] : r;
  shift = static_cast<T>(m);
  const double bc = (beta ? beta[c] : 0.0) - (m - shift) * ac;
  a = static_cast<T>(ac);
  b = static_cast<T>(bc);
  const double dev = std::sqrt(m2) + std::abs(m - shift);
  return fold_coeff_ok<T>(ac) && dev < fold_big<T> && fold_product_ok<T>(dev, ac) &&
         std::abs(bc) < fold_big<T>;
}

// The per-channel map of a training forward, from the channel's exact mean m,
// M2 q, biased variance v and r = 1/sqrt(v + eps): BatchNorm's, y = (x - m) * r
// * gamma + beta. fold() gives the coefficients of y = (x - shift) * a + b and
// whether they are safe in T; exact() is y in double, for channels where not.
// The BatchNorm variants (Batch Renormalization, mean-only BatchNorm) bring
// their own maps (bn_family below) and share the statistics passes.
template <typename T>
struct BnMap {
  const T* gamma;
  const T* beta;
  bool fold(T& shift, T& a, T& b, double m, double q, double /*v*/, double r, int64_t c) const {
    return fold_forward(shift, a, b, m, q, r, gamma, beta, c);
  }
  T exact(T x, double m, double r, int64_t c) const { return exact_y(x, m, r, gamma, beta, c); }
};

// ---- (N,C): rows split across threads, per-thread per-channel partial sums ----

// The rows [r0, r1): s1[c] += sum (x - K[c]), s2[c] += sum (x - K[c])^2, in
// double. Four rows per step, so the sums are loaded and stored once per four rows.
template <typename T>
void add_shifted_sums(double* s1, double* s2, const T* x, const double* K, int64_t r0, int64_t r1,
                      int64_t C) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const T* x0 = x + r * C;
    const T *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double d0 = x0[c] - K[c], d1 = x1[c] - K[c], d2 = x2[c] - K[c], d3 = x3[c] - K[c];
      s1[c] += (d0 + d1) + (d2 + d3);
      s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (; r < r1; ++r) {
    const T* xr = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double d = xr[c] - K[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// The rows [r0, r1), in double: s[c] += sum dy, q[c] += sum dy * (x - mean[c]),
// p[c] += sum (x - mean[c]); four rows per step. p measures how far the saved
// (float-rounded) mean is from the data's (see fold_backward).
// With Relu, dy is masked where the fused forward's output y (ry) is <= 0.
template <bool Relu = false, typename T>
void add_grad_sums(double* s, double* q, double* p, const T* dy, const T* x, const T* mean,
                   int64_t r0, int64_t r1, int64_t C, const T* ry = nullptr) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const T *x0 = x + r * C, *g0 = dy + r * C;
    const T *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C, *g1 = g0 + C, *g2 = g1 + C, *g3 = g2 + C;
    const T *y0 = nullptr, *y1 = nullptr, *y2 = nullptr, *y3 = nullptr;
    if constexpr (Relu) {
      y0 = ry + r * C;
      y1 = y0 + C, y2 = y1 + C, y3 = y2 + C;
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double m = mean[c];
      const double d0 = x0[c] - m, d1 = x1[c] - m, d2 = x2[c] - m, d3 = x3[c] - m;
      double e0, e1, e2, e3;
      if constexpr (Relu) {
        e0 = masked_dy<true>(g0[c], y0[c]), e1 = masked_dy<true>(g1[c], y1[c]);
        e2 = masked_dy<true>(g2[c], y2[c]), e3 = masked_dy<true>(g3[c], y3[c]);
      } else {
        e0 = g0[c], e1 = g1[c], e2 = g2[c], e3 = g3[c];
      }
      s[c] += (e0 + e1) + (e2 + e3);
      q[c] += (e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3);
      p[c] += (d0 + d1) + (d2 + d3);
    }
  }
  for (; r < r1; ++r) {
    const T *xr = x + r * C, *gr = dy + r * C, *yr = Relu ? ry + r * C : nullptr;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double dd = xr[c] - static_cast<double>(mean[c]);
      double e;
      if constexpr (Relu)
        e = masked_dy<true>(gr[c], yr[c]);
      else
        e = gr[c];
      s[c] += e;
      q[c] += e * dd;
      p[c] += dd;
    }
  }
}

// Statistics in one pass over x, summed in double: each thread sums x - K and
// (x - K)^2 per channel, with K its first row. The one-pass variance
// S2 - S1^2 / n in double then loses nothing visible in float, and large
// means stay exact; the threads' (n, mean, M2) are then Chan-merged.
template <bool Relu = false, typename T, typename Map>
void forward_train_rows(T* y, T* mean, T* rstd, T* var, const T* x, const Map& map, int64_t N,
                        int64_t C, T eps) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C);
  // Per thread: shift K, sums S1, S2 (double). Shared: shift, a, b for y (T);
  // exact mean and rstd (double) and whether the fold is safe, per channel.
  T* work = detail::scratch<T>(3 * Cp);
  double* totals = detail::scratch<double, 1>(3 * Cp * threads + 3 * Cp);
  T* shift = work;
  T* a = shift + Cp;
  T* b = a + Cp;
  double* md = totals + 3 * Cp * threads;
  double* rd = md + Cp;
  double* exact = rd + Cp;  // 1: the channel is computed as ref:: does
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    double* K = totals + 3 * Cp * t;
    double* S1 = K + Cp;
    double* S2 = S1 + Cp;
    std::fill(S1, S1 + 2 * Cp, 0.0);
    // K = the thread's first row: a value of the data, so (mean - K)^2 <= n var
    // and the one-pass S2 - S1^2 / n in double loses at most ~n * 1e-16 of the
    // variance (the float version needed a block mean here).
    if (r0 < r1) std::copy(x + r0 * C, x + r0 * C + C, K);
    add_shifted_sums(S1, S2, x, K, r0, r1, C);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double n = 0, m = 0, q = 0;
      for (int u = 0; u < nt; ++u) {
        const double nu = static_cast<double>(N * (u + 1) / nt - N * u / nt);
        if (nu == 0) continue;
        const double* Ku = totals + 3 * Cp * u;
        const double s1 = Ku[Cp + c], s2 = Ku[2 * Cp + c];
        chan_merge(n, m, q, nu, Ku[c] + s1 / nu, std::max(0.0, s2 - s1 * s1 / nu));
      }
      const double v = q / n, r = 1.0 / std::sqrt(v + eps);
      mean[c] = static_cast<T>(m);
      rstd[c] = static_cast<T>(r);
      if (var) var[c] = static_cast<T>(v);
      md[c] = m;
      rd[c] = r;
      exact[c] = map.fold(shift[c], a[c], b[c], m, q, v, r, c) ? 0.0 : 1.0;
    }
    // Rows in plain order: visiting the newest block first (hoping for L3 hits)
    // measured 3-9 % slower here, interleaved in one process (docs/performance.md).
    for (int64_t r = r0; r < r1; ++r)
      detail::map_row(
          y + r * C, C, stream,
          [](auto v, auto k, auto ac, auto bc) { return maybe_relu<Relu>((v - k) * ac + bc); },
          x + r * C, shift, a, b);
    if (stream) detail::stream_fence();
    for (int64_t c = 0; c < C; ++c)
      if (exact[c] != 0)
        for (int64_t r = r0; r < r1; ++r)
          y[r * C + c] = maybe_relu<Relu>(map.exact(x[r * C + c], md[c], rd[c], c));
  }
}

// The backward's coefficients for one channel from its sums (double): with
// xhat = (x - mean) * rstd, A = gamma * rstd, M values per channel,
//   train: dx = A * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
//        = A * dy + (x - mean) * Bc + Cc;
//   eval:  dx = A * dy (the statistics are constants).
// The saved mean is the batch mean rounded to T; for inputs like
// 1e4 + 0.01 * randn that rounding is a few % of the spread. The exact mean is
// mean + delta with delta = mean(x - mean), so every (x - mean) becomes
// (x - mean) - delta: sdyx loses delta * sdy and the dx map's constant absorbs
// -delta * Bc. Eval statistics are constants: no delta. Adds dgamma, dbeta;
// returns whether dx's coefficients are usable in T (0 or normal, below
// fold_big; else ChannelGrad holds what the exact computation needs). An
// overflow in the map itself shows as a non-finite dx: the row (segment) is
// then computed exactly (map_row_finite).
struct ChannelGrad {
  double m, r, gm, sdy, sdyx, M;  // exact mean, rstd, gamma, sum dy, sum dy * xhat, count
};
template <typename T>
bool fold_backward(bool train, T& A, T& Bc, T& Cc, ChannelGrad& g, T* dgamma, T* dbeta, double sdy,
                   double sdyx, double sx, const T* mean, const T* rstd, const T* gamma, int64_t c,
                   double M) {
  const double r = rstd[c], gm = gamma ? gamma[c] : 1.0, delta = train ? sx / M : 0.0;
  sdyx = (sdyx - delta * sdy) * r;  // sum(dy * xhat)
  if (dgamma) dgamma[c] += static_cast<T>(sdyx);
  if (dbeta) dbeta[c] += static_cast<T>(sdy);
  const double ad = gm * r, bc = train ? -ad * r * sdyx / M : 0.0;
  const double cc = train ? -ad * sdy / M - delta * bc : 0.0;
  A = static_cast<T>(ad);
  Bc = static_cast<T>(bc);
  Cc = static_cast<T>(cc);
  g = {mean[c] + delta, r, gm, sdy, sdyx, M};
  return fold_coeff_ok<T>(ad) && (!train || (fold_coeff_ok<T>(bc) && std::abs(cc) < fold_big<T>));
}

// dx of one value as ref:: computes it, for a channel whose fold is not safe.
template <typename T>
T exact_dx(bool train, T x, T dy, const ChannelGrad& g) {
  if (!train) return static_cast<T>(dy * g.gm * g.r);
  const double xhat = (x - g.m) * g.r;
  return static_cast<T>(g.gm * g.r * (dy - g.sdy / g.M - xhat * g.sdyx / g.M));
}

// Backward, train and eval (see fold_backward). One pass gathers the
// per-channel sums (per-thread partial sums in double); eval writes dx in it.
// With Relu, dy is masked where the fused forward's output ry is <= 0.
template <bool Relu = false, typename T>
void backward_rows(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                   const T* rstd, const T* gamma, int64_t N, int64_t C, const T* ry = nullptr) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C);
  // Per thread: sums of dy, dy * (x - mean), x - mean (double). Shared: A, Bc,
  // Cc (T); per channel whether dx is exact (double) and its ChannelGrad.
  T* work = detail::scratch<T>(3 * Cp);
  double* totals = detail::scratch<double, 1>(3 * Cp * threads + Cp);
  thread_local std::vector<ChannelGrad> grad_buf;  // grows once, then reused
  if (static_cast<int64_t>(grad_buf.size()) < C) grad_buf.resize(static_cast<size_t>(C));
  ChannelGrad* grads = grad_buf.data();
  T* A = work;
  T* Bc = A + Cp;
  T* Cc = Bc + Cp;
  double* exact = totals + 3 * Cp * threads;
  // Eval writes dx during the sums: A and its check come first.
  for (int64_t c = 0; c < C; ++c) {
    const double ad = (gamma ? gamma[c] : 1.0) * static_cast<double>(rstd[c]);
    A[c] = static_cast<T>(ad);
    exact[c] = train || fold_coeff_ok<T>(ad) ? 0.0 : 1.0;
  }
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    double* ts = totals + 3 * Cp * t;
    double* tq = ts + Cp;
    double* tp = tq + Cp;
    std::fill(ts, ts + 3 * Cp, 0.0);
    // Rows of eval's dx with a non-finite value (an overflow in dy * A): redone below.
    bool redo_eval = false;
    for (int64_t b0 = r0; b0 < r1; b0 += detail::kBlockRows) {
      const int64_t b1 = std::min(b0 + detail::kBlockRows, r1);
      add_grad_sums<Relu>(ts, tq, tp, dy, x, mean, b0, b1, C, ry);
      if (dx && !train)  // eval: dx = A * dy while the block is in cache
        for (int64_t r = b0; r < b1; ++r) {
          if constexpr (Relu)
            redo_eval |= !detail::map_row_finite(
                dx + r * C, C, stream,
                [](auto dv, auto ac, auto yv) { return masked_dy<true>(dv, yv) * ac; }, dy + r * C,
                A, ry + r * C);
          else
            redo_eval |= !detail::map_row_finite(
                dx + r * C, C, stream, [](auto dv, auto ac) { return dv * ac; }, dy + r * C, A);
        }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sdy = 0, sdyx = 0, sx = 0;
      for (int u = 0; u < nt; ++u) {
        sdy += totals[3 * Cp * u + c];
        sdyx += totals[3 * Cp * u + Cp + c];
        sx += totals[3 * Cp * u + 2 * Cp + c];
      }
      T a;
      const bool ok = fold_backward(train, a, Bc[c], Cc[c], grads[c], dgamma, dbeta, sdy, sdyx, sx,
                                    mean, rstd, gamma, c, static_cast<double>(N));
      if (train) {
        A[c] = a;
        exact[c] = ok ? 0.0 : 1.0;
      }
    }
    const auto dy_at = [&](int64_t k) { return Relu ? masked_dy<true>(dy[k], ry[k]) : dy[k]; };
    const auto exact_row = [&](int64_t r) {
      for (int64_t c = 0; c < C; ++c)
        dx[r * C + c] = exact_dx(train, x[r * C + c], dy_at(r * C + c), grads[c]);
    };
    if (dx && train)
      for (int64_t r = r0; r < r1; ++r) {
        bool finite;
        if constexpr (Relu)
          finite = detail::map_row_finite(
              dx + r * C, C, stream,
              [](auto v, auto dv, auto m, auto ac, auto bc, auto cc, auto yv) {
                return masked_dy<true>(dv, yv) * ac + (v - m) * bc + cc;
              },
              x + r * C, dy + r * C, mean, A, Bc, Cc, ry + r * C);
        else
          finite = detail::map_row_finite(
              dx + r * C, C, stream,
              [](auto v, auto dv, auto m, auto ac, auto bc, auto cc) {
                return dv * ac + (v - m) * bc + cc;
              },
              x + r * C, dy + r * C, mean, A, Bc, Cc);
        if (!finite) exact_row(r);
      }
    if (dx && redo_eval)
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c)
          if (!std::isfinite(dx[r * C + c])) exact_row(r);
    if (stream) detail::stream_fence();
    if (dx)
      for (int64_t c = 0; c < C; ++c)
        if (exact[c] != 0)
          for (int64_t r = r0; r < r1; ++r)
            dx[r * C + c] = exact_dx(train, x[r * C + c], dy_at(r * C + c), grads[c]);
  }
}

// ---- (N,C,L), L > 1: one thread per channel, segments of L contiguous values ----

// Channels in blocks of up to kSegBlock: a block's N segments of B*L values
// (about 1 MB: kSegBytes) stay in the core's L2 between the statistics pass
// and the output pass, and both passes walk memory in runs of B*L contiguous
// values. One channel at a time read 128 short runs 200 KB apart at (128, 64,
// 784): each one a new stream for the prefetchers (docs/performance.md). The
// per-channel sums keep their order (samples in turn), so the results are the
// one-channel loop's, bit for bit.
inline constexpr int64_t kSegBlock = 16;
inline constexpr int64_t kSegBytes = int64_t(2) << 20;

template <typename T>
int64_t segment_block(int64_t N, int64_t C, int64_t L, int inputs) {
  const int64_t per_channel =
      std::max<int64_t>(1, N * L * inputs * static_cast<int64_t>(sizeof(T)));
  return std::clamp<int64_t>(kSegBytes / per_channel, 1, std::min(C, kSegBlock));
}

template <bool Relu = false, typename T, typename Map>
void forward_train_segments(T* y, T* mean, T* rstd, T* var, const T* x, const Map& map, int64_t N,
                            int64_t C, int64_t L, T eps) {
  const int64_t B = segment_block<T>(N, C, L, 1), nblocks = (C + B - 1) / B;
  const bool stream = detail::stream_output<T>(N * C * L);
#pragma omp parallel num_threads(detail::kernel_threads(N* C* L))
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * B, nc = std::min(B, C - c0);
      double shift[kSegBlock], n[kSegBlock], m[kSegBlock], q[kSegBlock], r[kSegBlock];
      T k[kSegBlock], a[kSegBlock], b[kSegBlock];
      bool ok[kSegBlock];
      for (int64_t j = 0; j < nc; ++j) {
        shift[j] = x[(c0 + j) * L];
        n[j] = m[j] = q[j] = 0;
      }
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < nc; ++j) {
          const auto [sm, sq] = detail::shifted_moments(x + (i * C + c0 + j) * L, L, shift[j]);
          chan_merge(n[j], m[j], q[j], static_cast<double>(L), sm, sq);
        }
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t c = c0 + j;
        m[j] += shift[j];
        const double v = q[j] / n[j];
        r[j] = 1.0 / std::sqrt(v + eps);
        mean[c] = static_cast<T>(m[j]);
        rstd[c] = static_cast<T>(r[j]);
        if (var) var[c] = static_cast<T>(v);
        ok[j] = map.fold(k[j], a[j], b[j], m[j], q[j], v, r[j], c);
      }
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t c = c0 + j;
          const T* xs = x + (i * C + c) * L;
          T* ys = y + (i * C + c) * L;
          if (!ok[j]) {
            for (int64_t l = 0; l < L; ++l)
              ys[l] = maybe_relu<Relu>(map.exact(xs[l], m[j], r[j], c));
            continue;
          }
          const T kj = k[j], aj = a[j], bj = b[j];
          detail::map_row(
              ys, L, stream, [=](auto v) { return maybe_relu<Relu>((v - kj) * aj + bj); }, xs);
        }
    }
    if (stream) detail::stream_fence();
  }
}

// The backward's three channel sums over one segment, in one sweep over x and
// dy: sdy += sum dy, sdyx += sum dy (x - m), sx += sum (x - m), each in double
// with four vector accumulators over the same chunks and in the same order as
// three detail::sum_row_wide calls (so the same sums), but every value of x
// and dy is loaded and converted once instead of twice (the sweeps that
// re-read the segment from L1 were a third of the backward's sum pass).
// With Relu, dy is masked where the fused forward's output y is <= 0.
template <bool Relu = false, typename T>
void backward_sums(int64_t n, const T* x, const T* dy, double m, double& sdy, double& sdyx,
                   double& sx, const T* y = nullptr) {
  using detail::load_wide;
  using V = detail::Vec<double>;
  constexpr int64_t W = detail::kWideLanes;
  V d0{}, d1{}, d2{}, d3{}, p0{}, p1{}, p2{}, p3{}, c0{}, c1{}, c2{}, c3{};
  const auto step = [&](int64_t at, V& d, V& p, V& c) {
    const V v = load_wide(x + at) - m;
    V g = load_wide(dy + at);
    if constexpr (Relu) g = masked_dy<true>(g, load_wide(y + at));
    d += g;
    p += g * v;
    c += v;
  };
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    step(i, d0, p0, c0);
    step(i + W, d1, p1, c1);
    step(i + 2 * W, d2, p2, c2);
    step(i + 3 * W, d3, p3, c3);
  }
  for (; i + W <= n; i += W) step(i, d0, p0, c0);
  double a = detail::hsum<double>((d0 + d1) + (d2 + d3)),
         b = detail::hsum<double>((p0 + p1) + (p2 + p3)),
         c = detail::hsum<double>((c0 + c1) + (c2 + c3));
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]) - m,
                 g = static_cast<double>(Relu ? masked_dy<true>(dy[i], y[i]) : dy[i]);
    a += g;
    b += g * v;
    c += v;
  }
  sdy += a;
  sdyx += b;
  sx += c;
}

template <bool Relu = false, typename T>
void backward_segments(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                       const T* mean, const T* rstd, const T* gamma, int64_t N, int64_t C,
                       int64_t L, const T* ry = nullptr) {
  const double M = static_cast<double>(N * L);
  const int64_t B = segment_block<T>(N, C, L, 2), nblocks = (C + B - 1) / B;
  const bool stream = detail::stream_output<T>(N * C * L);
#pragma omp parallel num_threads(detail::kernel_threads(N* C* L))
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * B, nc = std::min(B, C - c0);
      double sdy[kSegBlock] = {}, sdyx[kSegBlock] = {}, sx[kSegBlock] = {};
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < nc; ++j) {
          const T* xs = x + (i * C + c0 + j) * L;
          const T* dys = dy + (i * C + c0 + j) * L;
          backward_sums<Relu, T>(L, xs, dys, static_cast<double>(mean[c0 + j]), sdy[j], sdyx[j],
                                 sx[j], Relu ? ry + (i * C + c0 + j) * L : nullptr);
        }
      T A[kSegBlock], Bc[kSegBlock], Cc[kSegBlock];
      ChannelGrad g[kSegBlock];
      bool ok[kSegBlock];
      for (int64_t j = 0; j < nc; ++j)
        ok[j] = fold_backward(train, A[j], Bc[j], Cc[j], g[j], dgamma, dbeta, sdy[j], sdyx[j],
                              sx[j], mean, rstd, gamma, c0 + j, M);
      if (!dx) continue;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t c = c0 + j;
          const T* xs = x + (i * C + c) * L;
          const T* dys = dy + (i * C + c) * L;
          T* dxs = dx + (i * C + c) * L;
          const T* ys = Relu ? ry + (i * C + c) * L : nullptr;
          const T mc = mean[c], Aj = A[j], Bj = Bc[j], Cj = Cc[j];
          // An overflow in the fold shows as inf or NaN: redo the segment.
          bool finite = false;
          if constexpr (Relu) {
            if (ok[j] && train)
              finite = detail::map_row_finite(
                  dxs, L, stream,
                  [=](auto dv, auto v, auto yv) {
                    return masked_dy<true>(dv, yv) * Aj + (v - mc) * Bj + Cj;
                  },
                  dys, xs, ys);
            else if (ok[j])
              finite = detail::map_row_finite(
                  dxs, L, stream, [=](auto dv, auto yv) { return masked_dy<true>(dv, yv) * Aj; },
                  dys, ys);
          } else {
            if (ok[j] && train)
              finite = detail::map_row_finite(
                  dxs, L, stream, [=](auto dv, auto v) { return dv * Aj + (v - mc) * Bj + Cj; },
                  dys, xs);
            else if (ok[j])
              finite = detail::map_row_finite(
                  dxs, L, stream, [=](auto dv) { return dv * Aj; }, dys);
          }
          if (!finite)
            for (int64_t l = 0; l < L; ++l)
              dxs[l] = exact_dx(train, xs[l], Relu ? masked_dy<true>(dys[l], ys[l]) : dys[l], g[j]);
        }
    }
    if (stream) detail::stream_fence();
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  if (N * C * L == 0) return;
  const BnMap<T> map{gamma, beta};
  if (L == 1)
    forward_train_rows(y, mean, rstd, var, x, map, N, C, eps);
  else
    forward_train_segments(y, mean, rstd, var, x, map, N, C, L, eps);
}

// y = (x - mean_c) * a_c + beta_c with a_c = gamma_c / sqrt(var_c + eps): one pass.
// Eval has no statistics of x to bound the fold with: a channel whose a_c is
// not a usable T (0 or normal, below fold_big) is computed as ref:: does, and
// so is a row (segment) with a non-finite output: if (x - mean) * a + b
// overflowed anywhere, its result is inf or NaN (map_row_finite), and ref::
// may still be finite (a = 1e-3 on x = 3e38, mean = -3e38).
//
// With Relu (a fused ReLU) the outputs are clamped as they are written; the
// finiteness check then sees relu's output, where an overflow to -inf shows
// as 0: ref:: followed by the ReLU gives 0 there too (a fold's overflow keeps
// the sign of (x - mean) * a).
template <bool Relu, typename T>
void forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma, const T* beta,
                  int64_t N, int64_t C, int64_t L, T eps) {
  const bool stream = detail::stream_output<T>(N * C * L);
  const int64_t Cp = detail::padded(C);
  T* a = detail::scratch<T>(2 * Cp);
  T* b = a + Cp;
  double* rd = detail::scratch<double, 1>(Cp);
  int64_t* exact = detail::scratch<int64_t>(C);  // the channels computed as ref:: does
  int64_t n_exact = 0;
  for (int64_t c = 0; c < C; ++c) {
    rd[c] = 1.0 / std::sqrt(static_cast<double>(var[c]) + static_cast<double>(eps));
    const double ad = (gamma ? gamma[c] : 1.0) * rd[c];
    a[c] = static_cast<T>(ad);
    b[c] = beta ? beta[c] : T(0);
    if (!fold_coeff_ok<T>(ad)) exact[n_exact++] = c;
  }
  const auto exact_one = [&](int64_t i, int64_t c, int64_t l) {
    const int64_t k = (i * C + c) * L + l;
    y[k] = maybe_relu<Relu>(exact_y(x[k], static_cast<double>(mean[c]), rd[c], gamma, beta, c));
  };
#pragma omp parallel num_threads(detail::kernel_threads(N* C* L))
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) {
      if (L == 1) {
        const bool finite = detail::map_row_finite(
            y + i * C, C, stream,
            [](auto v, auto m, auto ac, auto bc) { return maybe_relu<Relu>((v - m) * ac + bc); },
            x + i * C, mean, a, b);
        if (!finite)
          for (int64_t c = 0; c < C; ++c) exact_one(i, c, 0);
        else
          for (int64_t e = 0; e < n_exact; ++e) exact_one(i, exact[e], 0);
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        const T m = mean[c], ac = a[c], bc = b[c];
        const T* xs = x + (i * C + c) * L;
        T* ys = y + (i * C + c) * L;
        T chk = 0;
#pragma omp simd reduction(+ : chk)
        for (int64_t l = 0; l < L; ++l) {
          ys[l] = maybe_relu<Relu>((xs[l] - m) * ac + bc);
          chk += ys[l] - ys[l];
        }
        if (chk != chk)
          for (int64_t l = 0; l < L; ++l) exact_one(i, c, l);
      }
      for (int64_t e = 0; e < n_exact; ++e)
        for (int64_t l = 0; l < L; ++l) exact_one(i, exact[e], l);
    }
    if (stream) detail::stream_fence();
  }
}

template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  forward_eval<false>(y, x, mean, var, gamma, beta, N, C, L, eps);
}

template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  if (L == 1)
    backward_rows(true, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C);
  else
    backward_segments(true, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
}

template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  if (L == 1)
    backward_rows(false, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C);
  else
    backward_segments(false, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
}

// ---- BatchNorm with a following ReLU fused in (include/normlab/kernels.hpp) ----
// The kernels above with maybe_relu on every output and masked_dy on every dy
// read: the same sums in the same order over the same (masked) values, so the
// results equal BatchNorm's kernel followed by relu_forward, and relu_backward
// followed by BatchNorm's backward, bit for bit.

template <typename T>
void batchnorm_relu_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                  const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  if (N * C * L == 0) return;
  const BnMap<T> map{gamma, beta};
  if (L == 1)
    forward_train_rows<true>(y, mean, rstd, var, x, map, N, C, eps);
  else
    forward_train_segments<true>(y, mean, rstd, var, x, map, N, C, L, eps);
}

template <typename T>
void batchnorm_relu_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                                 const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  forward_eval<true>(y, x, mean, var, gamma, beta, N, C, L, eps);
}

template <typename T>
void batchnorm_relu_backward(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* y,
                             const T* x, const T* mean, const T* rstd, const T* gamma, int64_t N,
                             int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  if (L == 1)
    backward_rows<true>(train, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, y);
  else
    backward_segments<true>(train, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L, y);
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                    \
  NORMLAB_KERNEL(batchnorm_forward_train, T, T*, T*, T*, T*, const T*, const T*, const T*,        \
                 int64_t, int64_t, int64_t, T)                                                    \
  NORMLAB_KERNEL(batchnorm_forward_eval, T, T*, const T*, const T*, const T*, const T*, const T*, \
                 int64_t, int64_t, int64_t, T)                                                    \
  NORMLAB_KERNEL(batchnorm_backward_train, T, T*, T*, T*, const T*, const T*, const T*, const T*, \
                 const T*, int64_t, int64_t, int64_t)                                             \
  NORMLAB_KERNEL(batchnorm_backward_eval, T, T*, T*, T*, const T*, const T*, const T*, const T*,  \
                 const T*, int64_t, int64_t, int64_t)                                             \
  NORMLAB_KERNEL(batchnorm_relu_forward_train, T, T*, T*, T*, T*, const T*, const T*, const T*,   \
                 int64_t, int64_t, int64_t, T)                                                    \
  NORMLAB_KERNEL(batchnorm_relu_forward_eval, T, T*, const T*, const T*, const T*, const T*,      \
                 const T*, int64_t, int64_t, int64_t, T)                                          \
  NORMLAB_KERNEL(batchnorm_relu_backward, T, bool, T*, T*, T*, const T*, const T*, const T*,      \
                 const T*, const T*, const T*, int64_t, int64_t, int64_t)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

namespace normlab::NORMLAB_ISA_NAMESPACE {

// ---- The BatchNorm variants (include/normlab/bn_family_kernels.hpp) ----
// Their training forwards are BatchNorm's statistics passes with another
// per-channel map (see BnMap); the backwards are in bn_family_fast.cpp.
namespace {

// Coefficients of y = (x - shift) * a + b for the map y = (x - m) * ac + bc,
// with shift = m rounded to T; whether they are safe in T, as fold_forward.
template <typename T>
bool fold_map(T& shift, T& a, T& b, double m, double q, double ac, double bc) {
  shift = static_cast<T>(m);
  bc -= (m - shift) * ac;
  a = static_cast<T>(ac);
  b = static_cast<T>(bc);
  const double dev = std::sqrt(q) + std::abs(m - shift);
  return fold_coeff_ok<T>(ac) && dev < fold_big<T> && fold_product_ok<T>(dev, ac) &&
         std::abs(bc) < fold_big<T>;
}

// Batch Renormalization: y = gamma * ((x - m) * r_B * rr + dd) + beta, with rr,
// dd from the channel's batch and running statistics (batchrenorm_correction).
// Writes rr, dd per channel (T for the backward, double for exact()).
template <typename T>
struct RenormMap {
  const T *gamma, *beta, *running_mean, *running_var;
  double rmax, dmax, eps;
  T *r_out, *d_out;
  double* rr;  // 2 * C: rr, then dd
  int64_t C;
  bool fold(T& shift, T& a, T& b, double m, double q, double v, double r, int64_t c) const {
    double cr, cd;
    batchrenorm_correction(cr, cd, m, v, running_mean[c], running_var[c], rmax, dmax, eps);
    r_out[c] = static_cast<T>(cr);
    d_out[c] = static_cast<T>(cd);
    rr[c] = cr;
    rr[C + c] = cd;
    const double g = gamma ? gamma[c] : 1.0;
    return fold_map(shift, a, b, m, q, r * cr * g, cd * g + (beta ? beta[c] : 0.0));
  }
  T exact(T x, double m, double r, int64_t c) const {
    double out = (x - m) * r * rr[c] + rr[C + c];
    if (gamma) out *= gamma[c];
    if (beta) out += beta[c];
    return static_cast<T>(out);
  }
};

// Mean-only BatchNorm: y = x - m + bias.
template <typename T>
struct MeanOnlyMap {
  const T* bias;
  bool fold(T& shift, T& a, T& b, double m, double q, double, double, int64_t c) const {
    return fold_map(shift, a, b, m, q, 1.0, bias ? bias[c] : 0.0);
  }
  T exact(T x, double m, double, int64_t c) const {
    return static_cast<T>((x - m) + (bias ? bias[c] : 0.0));
  }
};

template <typename T, typename Map>
void forward_train_map(T* y, T* mean, T* rstd, T* var, const T* x, const Map& map, int64_t N,
                       int64_t C, int64_t L, T eps) {
  if (L == 1)
    forward_train_rows(y, mean, rstd, var, x, map, N, C, eps);
  else
    forward_train_segments(y, mean, rstd, var, x, map, N, C, L, eps);
}

// Ghost BatchNorm, (N,C): each thread takes whole virtual batches of K rows.
// Per virtual batch the sums are forward_train_rows' with one thread (the
// shift is its first row), so the results are BatchNorm's on that batch; the
// per-channel finish (mean, rstd, fold and its checks) runs as one vector loop
// over the channels, since with K = 32 rows it is 1/32 of the work, where
// BatchNorm's scalar finish was measured at half the time. y is streamed when
// the whole output is large (map_row), as BatchNorm's.
// (The file is compiled with -fno-math-errno, so that the finish's sqrt vectorizes.)
template <typename T>
void ghost_forward_rows(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                        int64_t N, int64_t C, int64_t K, T eps) {
  const int64_t G = (N + K - 1) / K, Cp = detail::padded(C);
  const bool stream = detail::stream_output<T>(N * C);
  constexpr double big = fold_big<T>, tiny = static_cast<double>(std::numeric_limits<T>::min());
  // gamma = 1, beta = 0 where absent, so that the finish is one branch-free vector loop.
  T* unit = detail::scratch<T, 6>(2 * Cp);
  std::fill(unit, unit + Cp, T(1));
  std::fill(unit + Cp, unit + 2 * Cp, T(0));
  const T* gm = gamma ? gamma : unit;
  const T* bt = beta ? beta : unit + Cp;
#pragma omp parallel num_threads(detail::kernel_threads(N* C))
  {
    double* w = detail::scratch<double, 4>(6 * Cp);  // shift K, S1, S2, exact mean, rstd, flag
    double *Kc = w, *S1 = w + Cp, *S2 = w + 2 * Cp, *md = w + 3 * Cp, *rd = w + 4 * Cp;
    double* flag = w + 5 * Cp;
    T* f = detail::scratch<T, 5>(3 * Cp);  // shift, a, b of the fold
    T *shift = f, *a = f + Cp, *b = f + 2 * Cp;
#pragma omp for schedule(static)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r0 = g * K, r1 = std::min(N, r0 + K);
      const double n = static_cast<double>(r1 - r0);
      std::copy(x + r0 * C, x + r0 * C + C, Kc);
      std::fill(S1, S1 + 2 * Cp, 0.0);
      add_shifted_sums(S1, S2, x, Kc, r0, r1, C);
      T* mg = mean + g * C;
      T* rg = rstd + g * C;
      T* vg = var + g * C;
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int64_t c = 0; c < C; ++c) {
        const double s1 = S1[c], m = Kc[c] + s1 / n, q = std::max(0.0, S2[c] - s1 * s1 / n);
        const double v = q / n, r = 1.0 / std::sqrt(v + eps);
        mg[c] = static_cast<T>(m);
        rg[c] = static_cast<T>(r);
        vg[c] = static_cast<T>(v);
        md[c] = m;
        rd[c] = r;
        const double ac = r * static_cast<double>(gm[c]);
        const T sh = static_cast<T>(m);
        const double bc = static_cast<double>(bt[c]) - (m - sh) * ac;
        shift[c] = sh;
        a[c] = static_cast<T>(ac);
        b[c] = static_cast<T>(bc);
        const double aa = std::abs(ac), dev = std::sqrt(q) + std::abs(m - sh);
        const int ok = ((aa == 0) | ((aa >= tiny) & (aa < big))) & (dev < big) & (dev * aa < big) &
                       (std::abs(bc) < big);
        flag[c] = ok ? 0.0 : 1.0;
        any |= 1 - ok;
      }
      for (int64_t r = r0; r < r1; ++r)
        detail::map_row(
            y + r * C, C, stream,
            [](auto v, auto k, auto ac, auto bc) { return (v - k) * ac + bc; }, x + r * C, shift, a,
            b);
      if (any)
        for (int64_t c = 0; c < C; ++c)
          if (flag[c] != 0)
            for (int64_t r = r0; r < r1; ++r)
              y[r * C + c] = exact_y(x[r * C + c], md[c], rd[c], gamma, beta, c);
    }
    if (stream) detail::stream_fence();
  }
}

// Ghost BatchNorm's backward, (N,C): each thread takes whole virtual batches;
// per batch the sums are backward_rows' (add_grad_sums, one thread) and the
// per-channel finish (fold_backward's arithmetic and checks) one vector loop;
// dgamma, dbeta go to the thread's sums acc (2 * Cp, zeroed by the caller).
// A virtual batch in `exact` is computed by ref::batchnorm_backward_train.
template <typename T>
void ghost_backward_rows(T* dx, T* acc, int64_t Cp, const T* dy, const T* x, const T* mean,
                         const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t K,
                         const char* exact, bool stream) {
  const int64_t G = (N + K - 1) / K;
  constexpr double big = fold_big<T>, tiny = static_cast<double>(std::numeric_limits<T>::min());
  const auto coeff_ok = [=](double v) {
    const double av = std::abs(v);
    return (av == 0) | ((av >= tiny) & (av < big));
  };
  T* dg = acc;
  T* db = acc + Cp;
  double* w = detail::scratch<double, 4>(7 * Cp);  // s, q, p; exact mean, sum dy, sum dy xhat; flag
  double *S = w, *Q = w + Cp, *P = w + 2 * Cp, *em = w + 3 * Cp, *esdy = w + 4 * Cp;
  double *esdyx = w + 5 * Cp, *flag = w + 6 * Cp;
  T* f = detail::scratch<T, 5>(3 * Cp);  // A, Bc, Cc
  T *A = f, *Bc = f + Cp, *Cc = f + 2 * Cp;
#pragma omp for schedule(static)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = g * K, r1 = std::min(N, r0 + K);
    const double M = static_cast<double>(r1 - r0);
    const T* mg = mean + g * C;
    const T* rg = rstd + g * C;
    if (exact && exact[g]) {
      ref::batchnorm_backward_train(dx ? dx + r0 * C : nullptr, dg, db, dy + r0 * C, x + r0 * C, mg,
                                    rg, gamma, r1 - r0, C, int64_t{1});
      continue;
    }
    std::fill(S, S + 3 * Cp, 0.0);
    add_grad_sums(S, Q, P, dy, x, mg, r0, r1, C);
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t c = 0; c < C; ++c) {
      const double r = rg[c], gm = gamma ? static_cast<double>(gamma[c]) : 1.0, sdy = S[c];
      const double delta = P[c] / M, sdyx = (Q[c] - delta * sdy) * r;
      dg[c] += static_cast<T>(sdyx);
      db[c] += static_cast<T>(sdy);
      const double ad = gm * r, bc = -ad * r * sdyx / M, cc = -ad * sdy / M - delta * bc;
      A[c] = static_cast<T>(ad);
      Bc[c] = static_cast<T>(bc);
      Cc[c] = static_cast<T>(cc);
      em[c] = mg[c] + delta;
      esdy[c] = sdy;
      esdyx[c] = sdyx;
      const int ok = coeff_ok(ad) & coeff_ok(bc) & (std::abs(cc) < big);
      flag[c] = ok ? 0.0 : 1.0;
      any |= 1 - ok;
    }
    if (!dx) continue;
    const auto exact_one = [&](int64_t r, int64_t c) {
      const ChannelGrad cg{em[c],
                           static_cast<double>(rg[c]),
                           gamma ? static_cast<double>(gamma[c]) : 1.0,
                           esdy[c],
                           esdyx[c],
                           M};
      dx[r * C + c] = exact_dx(true, x[r * C + c], dy[r * C + c], cg);
    };
    for (int64_t r = r0; r < r1; ++r)
      if (!detail::map_row_finite(
              dx + r * C, C, stream,
              [](auto v, auto dv, auto m, auto ac, auto bc, auto cc) {
                return dv * ac + (v - m) * bc + cc;
              },
              x + r * C, dy + r * C, mg, A, Bc, Cc))
        for (int64_t c = 0; c < C; ++c) exact_one(r, c);
    if (any)
      for (int64_t c = 0; c < C; ++c)
        if (flag[c] != 0)
          for (int64_t r = r0; r < r1; ++r) exact_one(r, c);
  }
}

}  // namespace

template <typename T>
void ghost_batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                   const T* beta, int64_t N, int64_t C, int64_t L, int64_t K,
                                   T eps) {
  if (N * C * L == 0) return;
  const int64_t G = (N + K - 1) / K, S = C * L;
  if (!detail::ghost_by_batches(G, N, C, L)) {  // one virtual batch at a time, all threads on it
    for (int64_t g = 0; g < G; ++g) {
      const int64_t n0 = g * K, ng = std::min(K, N - n0);
      batchnorm_forward_train(y + n0 * S, mean + g * C, rstd + g * C, var + g * C, x + n0 * S,
                              gamma, beta, ng, C, L, eps);
    }
    return;
  }
  if (L == 1) return ghost_forward_rows(y, mean, rstd, var, x, gamma, beta, N, C, K, eps);
#pragma omp parallel for schedule(static) num_threads(detail::kernel_threads(N* C* L))
  for (int64_t g = 0; g < G; ++g) {  // BatchNorm's segments kernel, on this thread
    const int64_t n0 = g * K, ng = std::min(K, N - n0);
    batchnorm_forward_train(y + n0 * S, mean + g * C, rstd + g * C, var + g * C, x + n0 * S, gamma,
                            beta, ng, C, L, eps);
  }
}

template <typename T>
void ghost_batchnorm_backward_rows(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                                   const T* mean, const T* rstd, const T* gamma, int64_t N,
                                   int64_t C, int64_t K, const char* exact) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C);
  T* acc = detail::scratch<T, 3>(2 * Cp * threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    T* mine = acc + 2 * Cp * t;
    std::fill(mine, mine + 2 * Cp, T(0));
    ghost_backward_rows(dx, mine, Cp, dy, x, mean, rstd, gamma, N, C, K, exact, stream);
    if (stream) detail::stream_fence();
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      for (int u = 0; u < omp_get_num_threads(); ++u) {
        if (dgamma) dgamma[c] += acc[2 * Cp * u + c];
        if (dbeta) dbeta[c] += acc[2 * Cp * u + Cp + c];
      }
  }
}

template <typename T>
void batchrenorm_forward_train(T* y, T* mean, T* rstd, T* var, T* r, T* d, const T* x,
                               const T* gamma, const T* beta, const T* running_mean,
                               const T* running_var, double rmax, double dmax, int64_t N, int64_t C,
                               int64_t L, T eps) {
  if (N * C * L == 0) return;
  double* rr = detail::scratch<double, 2>(2 * C);
  const RenormMap<T> map{
      gamma, beta, running_mean, running_var, rmax, dmax, static_cast<double>(eps), r, d, rr, C};
  forward_train_map(y, mean, rstd, var, x, map, N, C, L, eps);
}

template <typename T>
void meanonly_batchnorm_forward_train(T* y, T* mean, const T* x, const T* bias, int64_t N,
                                      int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  // rstd is computed (with eps = 1, so never a division by 0) and not used.
  T* rstd = detail::scratch<T, 2>(C);
  forward_train_map(y, mean, rstd, static_cast<T*>(nullptr), x, MeanOnlyMap<T>{bias}, N, C, L,
                    T(1));
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                   \
  NORMLAB_KERNEL(batchrenorm_forward_train, T, T*, T*, T*, T*, T*, T*, const T*, const T*,       \
                 const T*, const T*, const T*, double, double, int64_t, int64_t, int64_t, T)     \
  NORMLAB_KERNEL(meanonly_batchnorm_forward_train, T, T*, T*, const T*, const T*, int64_t,       \
                 int64_t, int64_t)                                                               \
  NORMLAB_KERNEL(ghost_batchnorm_backward_rows, T, T*, T*, T*, const T*, const T*, const T*,     \
                 const T*, const T*, int64_t, int64_t, int64_t, const char*)                     \
  NORMLAB_KERNEL(ghost_batchnorm_forward_train, T, T*, T*, T*, T*, const T*, const T*, const T*, \
                 int64_t, int64_t, int64_t, int64_t, T)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
