// Does oneDNN's pooling serve the cnn preset better than normlab's own pools?
// Times MaxPool2d(2) and AvgPool2d(2) forward (training) + backward at the
// preset's two pooled shapes, batch 128, in one process:
//   - normlab's layers, NCHW in and out, as the model runs them (MaxPool2d: the
//     2x2 kernels of src/kernels/pool2d_fast.cpp; AvgPool2d: oneDNN's NCHW
//     pooling since this bench found it 4-5x faster than the plain loops it had);
//   - oneDNN 2.6's pooling primitives on the same NCHW buffers (max with its
//     workspace, avg exclude/include padding alike here: no padding);
//   - oneDNN's pooling on its blocked layouts (nChw16c, what the convolutions
//     produce on AVX-512; nChw8c, on AVX2), without the reorders to get there.
// Prints oneDNN's implementation names and the fastest of 25 runs (the
// machine may be shared). Issue 11; the table is in docs/performance.md,
// "Pooling: normlab's kernels against oneDNN's".
//   OMP_NUM_THREADS=2 build/bench/normlab_pool_onednn
//   ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 build/bench/normlab_pool_onednn
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <unordered_map>
#include <vector>

#include "normlab/pool.hpp"

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

double fastest_ms(const std::function<void()>& f, int reps) {
  std::vector<double> t;
  f();  // warm-up: primitives' first run, page faults
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  return *std::min_element(t.begin(), t.end());
}

void fill(float* p, size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  for (size_t i = 0; i < n; ++i) p[i] = d(g);
}

// oneDNN's pooling fwd (training) + bwd on activations in `at` (nchw or any).
double onednn_ms(const engine& eng, stream& s, algorithm alg, const memory::dims& src,
                 const memory::dims& dst, tag at, int reps, const char* label) {
  const memory::dims k{2, 2}, st{2, 2}, pad{0, 0};
  const memory::desc smd(src, dt::f32, at), dmd(dst, dt::f32, at);
  pooling_forward::primitive_desc fpd({prop_kind::forward_training, alg, smd, dmd, st, k, pad, pad},
                                      eng);
  pooling_backward::primitive_desc bpd({alg, smd, dmd, st, k, pad, pad}, eng, fpd);
  memory x(fpd.src_desc(), eng), y(fpd.dst_desc(), eng), dy(bpd.diff_dst_desc(), eng),
      dx(bpd.diff_src_desc(), eng);
  fill(static_cast<float*>(x.get_data_handle()), fpd.src_desc().get_size() / 4, 1);
  fill(static_cast<float*>(dy.get_data_handle()), bpd.diff_dst_desc().get_size() / 4, 2);
  const bool max = alg == algorithm::pooling_max;
  memory ws = max ? memory(fpd.workspace_desc(), eng) : memory();
  pooling_forward fwd(fpd);
  pooling_backward bwd(bpd);
  const double ms = fastest_ms(
      [&] {
        std::unordered_map<int, memory> fa{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}};
        std::unordered_map<int, memory> ba{{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, dx}};
        if (max) fa[DNNL_ARG_WORKSPACE] = ws, ba[DNNL_ARG_WORKSPACE] = ws;
        fwd.execute(s, fa);
        bwd.execute(s, ba);
        s.wait();
      },
      reps);
  std::printf("  %-34s %8.3f ms   (%s / %s)\n", label, ms, fpd.impl_info_str(),
              bpd.impl_info_str());
  return ms;
}

template <typename Pool>
double normlab_ms(Pool& pool, const normlab::Shape& in, int reps, const char* label) {
  normlab::Tensor<float> x(in);
  fill(x.data(), static_cast<size_t>(x.numel()), 1);
  const normlab::Shape out = pool.output_shape(in);
  normlab::Tensor<float> dy(out);
  fill(dy.data(), static_cast<size_t>(dy.numel()), 2);
  const double ms = fastest_ms(
      [&] {
        pool.forward(x);
        pool.backward(dy);
      },
      reps);
  std::printf("  %-34s %8.3f ms\n", label, ms);
  return ms;
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const int reps = std::getenv("REPS") ? std::atoi(std::getenv("REPS")) : 25;
  struct Case {
    const char* name;
    int64_t N, C, H, W;
  };
  // After conv1 (26 x 26, 32 channels) and after conv2 (11 x 11, 64 channels).
  for (const Case c : {Case{"pool1", 128, 32, 26, 26}, Case{"pool2", 128, 64, 11, 11}}) {
    const memory::dims src{c.N, c.C, c.H, c.W}, dst{c.N, c.C, c.H / 2, c.W / 2};
    const normlab::Shape in{c.N, c.C, c.H, c.W};
    std::printf("%s (%lld, %lld, %lld, %lld), fwd + bwd, fastest of %d:\n", c.name,
                static_cast<long long>(c.N), static_cast<long long>(c.C),
                static_cast<long long>(c.H), static_cast<long long>(c.W), reps);
    normlab::MaxPool2d<float> mp(2);
    mp.set_training(true);
    normlab_ms(mp, in, reps, "max: normlab (NCHW)");
    onednn_ms(eng, s, algorithm::pooling_max, src, dst, tag::nchw, reps, "max: oneDNN, NCHW");
    onednn_ms(eng, s, algorithm::pooling_max, src, dst, tag::nChw16c, reps, "max: oneDNN, nChw16c");
    onednn_ms(eng, s, algorithm::pooling_max, src, dst, tag::nChw8c, reps, "max: oneDNN, nChw8c");
    normlab::AvgPool2d<float> ap(2);
    ap.set_training(true);
    normlab_ms(ap, in, reps, "avg: normlab (NCHW)");
    onednn_ms(eng, s, algorithm::pooling_avg_include_padding, src, dst, tag::nchw, reps,
              "avg: oneDNN, NCHW");
    onednn_ms(eng, s, algorithm::pooling_avg_include_padding, src, dst, tag::nChw16c, reps,
              "avg: oneDNN, nChw16c");
    onednn_ms(eng, s, algorithm::pooling_avg_include_padding, src, dst, tag::nChw8c, reps,
              "avg: oneDNN, nChw8c");
  }
}
