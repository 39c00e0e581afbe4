// Fused BatchNorm + ReLU against BatchNorm then ReLU (the kernels alone,
// training forward + backward, float, the cnn preset's shapes; fastest of
// 25, the two interleaved): build/bench/normlab_bn_relu (docs/performance.md,
// "BatchNorm2d + ReLU fused").
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>
#include "normlab/kernels.hpp"
using namespace normlab;
int main() {
  struct S {
    long N, C, L;
  } shapes[] = {{128, 32, 676}, {128, 64, 121}, {128, 128, 1}};
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (auto s : shapes) {
      const long n = s.N * s.C * s.L;
      std::vector<float> x(n), y(n), y2(n), dy(n), dx(n), m(s.C), r(s.C), v(s.C), g(s.C, 1.f),
          b(s.C, 0.f), dg(s.C), db(s.C);
      for (long i = 0; i < n; ++i) {
        x[i] = float((i * 7919) % 1000) / 500.f - 1;
        dy[i] = float((i * 104729) % 1000) / 500.f - 1;
      }
      double tu = 1e9, tf = 1e9;
      for (int rep = 0; rep < 25; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        batchnorm_forward_train(y.data(), m.data(), r.data(), v.data(), x.data(), g.data(),
                                b.data(), s.N, s.C, s.L, 1e-5f);
        relu_forward(y2.data(), y.data(), n);
        relu_backward(y.data(), dy.data(), y2.data(),
                      n);  // the masked dy into y's buffer (the ReLU layer's dx)
        batchnorm_backward_train(dx.data(), dg.data(), db.data(), y.data(), x.data(), m.data(),
                                 r.data(), g.data(), s.N, s.C, s.L);
        auto t1 = std::chrono::steady_clock::now();
        batchnorm_relu_forward_train(y.data(), m.data(), r.data(), v.data(), x.data(), g.data(),
                                     b.data(), s.N, s.C, s.L, 1e-5f);
        batchnorm_relu_backward(true, dx.data(), dg.data(), db.data(), dy.data(), y.data(),
                                x.data(), m.data(), r.data(), g.data(), s.N, s.C, s.L);
        auto t2 = std::chrono::steady_clock::now();
        tu = std::min(tu, std::chrono::duration<double, std::milli>(t1 - t0).count());
        tf = std::min(tf, std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
      std::printf("threads %d (%ld, %ld, %ld): BN + ReLU fwd+bwd %.2f ms, fused %.2f ms (%.2fx)\n",
                  threads, s.N, s.C, s.L, tu, tf, tu / tf);
    }
  }
}
