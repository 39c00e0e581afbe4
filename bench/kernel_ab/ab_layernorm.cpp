// LayerNorm's fast float kernels of two revisions in one process (run.sh builds
// this with the old layernorm_fast.cpp in namespace isa_old and the tree's in
// isa_new), interleaved: each round times old then new or new then old
// (alternating), the minimum over rounds is shown. Harness only; not built
// by CMake.
//
//   ab N D threads [rounds] [row mean]
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
using F = void (*)(float*, float*, float*, const float*, const float*, const float*, int64_t,
                   int64_t, float);
using B = void (*)(float*, float*, float*, const float*, const float*, const float*, const float*,
                   const float*, int64_t, int64_t);
namespace normlab::isa_old::entry {
extern F const layernorm_forward_float;
extern B const layernorm_backward_float;
}  // namespace normlab::isa_old::entry
namespace normlab::isa_new::entry {
extern F const layernorm_forward_float;
extern B const layernorm_backward_float;
}  // namespace normlab::isa_new::entry
static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
int main(int argc, char** argv) {
  int64_t N = atol(argv[1]), D = atol(argv[2]);
  int th = atoi(argv[3]);
  int reps = argc > 4 ? atoi(argv[4]) : 30;
  double mu = argc > 5 ? atof(argv[5]) : 0.0;
  omp_set_num_threads(th);
  auto al = [](size_t n) { return (float*)aligned_alloc(64, ((n * 4 + 63) / 64) * 64); };
  float *x = al(N * D), *dy = al(N * D), *y = al(N * D), *dx = al(N * D), *m = al(N), *r = al(N),
        *g = al(D), *b = al(D), *dg = al(D), *db = al(D);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (int64_t i = 0; i < N * D; ++i) x[i] = mu + nd(rng), dy[i] = nd(rng), y[i] = dx[i] = 0;
  for (int64_t i = 0; i < D; ++i)
    g[i] = 1 + 0.1f * nd(rng), b[i] = 0.1f * nd(rng), dg[i] = db[i] = 0;
  F fw[2] = {normlab::isa_old::entry::layernorm_forward_float,
             normlab::isa_new::entry::layernorm_forward_float};
  B bw[2] = {normlab::isa_old::entry::layernorm_backward_float,
             normlab::isa_new::entry::layernorm_backward_float};
  int inner = std::max<int64_t>(1, 20000000 / (N * D));
  double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};
  for (int rep = 0; rep < reps; ++rep)
    for (int kk = 0; kk < 2; ++kk) {
      const int k = (rep & 1) ? 1 - kk : kk;
      double t0 = now();
      for (int i = 0; i < inner; ++i) fw[k](y, m, r, x, g, b, N, D, 1e-5f);
      double t1 = now();
      for (int i = 0; i < inner; ++i) bw[k](dx, dg, db, dy, x, m, r, g, N, D);
      double t2 = now();
      best[k][0] = std::min(best[k][0], (t1 - t0) / inner);
      best[k][1] = std::min(best[k][1], (t2 - t1) / inner);
    }
  printf(
      "%ldx%ld th=%d mu=%g  fwd old %.1f new %.1f us (%.2fx)   bwd old %.1f new %.1f us (%.2fx)  "
      "fwd+bwd %.2fx\n",
      N, D, th, mu, best[0][0] * 1e6, best[1][0] * 1e6, best[0][0] / best[1][0], best[0][1] * 1e6,
      best[1][1] * 1e6, best[0][1] / best[1][1],
      (best[0][0] + best[0][1]) / (best[1][0] + best[1][1]));
}
