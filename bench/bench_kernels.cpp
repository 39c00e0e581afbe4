// Google Benchmark suite for the normalization kernels, in float, at the shapes
// of issue 4, next to a plain copy and next to oneDNN's own primitives.
//
//   OMP_NUM_THREADS=2 build/bench/normlab_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true           (one command line)
//
// Every benchmark reports GB/s (the bytes the pass must move, see
// normlab/kernel_bench.hpp), and right after its timed loop measures the copy
// of x at the same shape with the same threads: copy_GB/s and pct_copy (the
// kernel's GB/s as a percentage of the copy's). Measuring the copy next to each
// kernel keeps the ratio honest when the machine is shared. Shapes whose x
// exceeds 1 MB run "cold" (each call takes the next buffer set of a ring four
// times the L3, so data comes from DRAM), smaller ones "warm": see
// normlab/kernel_bench.hpp; the label says which.
#include <benchmark/benchmark.h>

#include <omp.h>

#include <chrono>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>

#include "kernels/simd.hpp"
#include "normlab/kernel_bench.hpp"

namespace {

namespace nb = normlab::bench;
using Clock = std::chrono::steady_clock;

nb::BenchShape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1)};
}

// The shape's buffer ring (warm or cold by nb::default_cache), labelled.
nb::BufferRing make_ring(benchmark::State& state) {
  const nb::BenchShape shape = shape_of(state);
  const nb::Cache cache = nb::default_cache(shape);
  state.SetLabel(nb::cache_name(cache));
  return nb::BufferRing(shape, cache);
}

// Runs op (on the ring's next set each call) in the timed loop, then sets the
// GB/s, copy and ratio counters; the copy cycles through the same ring.
void run_and_report(benchmark::State& state, nb::BufferRing& ring, double bytes,
                    const std::function<void(nb::NormBuffers&)>& op) {
  for (size_t i = 0; i < ring.size(); ++i) op(ring.next());  // page faults, pool, scratch
  const auto start = Clock::now();
  for (auto _ : state) op(ring.next());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count() /
                         static_cast<double>(state.iterations());
  const nb::BenchShape shape = shape_of(state);
  const int64_t n = shape.N * shape.D;
  const double copy_s = nb::median_seconds(
      [&] {
        nb::NormBuffers& b = ring.next();
        nb::parallel_copy(b.y.data(), b.x.data(), n);
      },
      5, 0.005);
  const double gbps = bytes / seconds / 1e9;
  const double copy_gbps = nb::pass_bytes(nb::Pass::forward, shape) / copy_s / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["copy_GB/s"] = copy_gbps;
  state.counters["pct_copy"] = 100.0 * gbps / copy_gbps;
}

void bm_copy(benchmark::State& state) {
  nb::BufferRing ring = make_ring(state);
  const nb::BenchShape shape = shape_of(state);
  run_and_report(state, ring, nb::pass_bytes(nb::Pass::forward, shape), [&](nb::NormBuffers& b) {
    nb::parallel_copy(b.y.data(), b.x.data(), b.x.size());
  });
}

// The machine's other ceilings, same threads and shapes: one read of x (a sum),
// and a copy with non-temporal stores (no read of the destination first, as
// the kernels write outputs of 4 MB and more). GB/s counts the bytes moved.
void bm_read(benchmark::State& state) {
  nb::BufferRing ring = make_ring(state);
  const nb::BenchShape shape = shape_of(state);
  float sink = 0;
  run_and_report(state, ring, static_cast<double>(shape.N * shape.D) * sizeof(float),
                 [&](nb::NormBuffers& b) {
                   float s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
                   for (int64_t r = 0; r < b.shape.N; ++r)
                     s += normlab::detail::sum_row<float>(
                         b.shape.D, [](auto v) { return v; }, b.x.data() + r * b.shape.D);
                   sink += s;
                 });
  benchmark::DoNotOptimize(sink);
}

void bm_copy_nt(benchmark::State& state) {
  nb::BufferRing ring = make_ring(state);
  run_and_report(
      state, ring, nb::pass_bytes(nb::Pass::forward, shape_of(state)), [&](nb::NormBuffers& b) {
#pragma omp parallel
        {
          const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
          const int64_t n = b.shape.N * b.shape.D, lo = n * t / nt, hi = n * (t + 1) / nt;
          normlab::detail::map_row(
              b.y.data() + lo, hi - lo, true, [](auto v) { return v; }, b.x.data() + lo);
          normlab::detail::stream_fence();
        }
      });
}

void bm_normlab(benchmark::State& state, nb::Kernel k, nb::Pass p) {
  nb::BufferRing ring = make_ring(state);
  run_and_report(state, ring, nb::pass_bytes(p, shape_of(state)),
                 [&](nb::NormBuffers& b) { nb::run_pass(k, p, b); });
}

// oneDNN's layer_normalization / batch_normalization on the same buffers:
// forward training (writes mean and variance) and backward (dx, dscale, dshift).
void bm_onednn(benchmark::State& state, bool layer_norm, nb::Pass p) {
  using namespace dnnl;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  nb::BufferRing ring = make_ring(state);
  const nb::BenchShape shape = shape_of(state);
  const int64_t N = shape.N, D = shape.D;
  const float eps = 1e-5f;
  engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  const memory::desc data_md({N, D}, dt::f32, tag::ab);
  const memory::desc stat_md({layer_norm ? N : D}, dt::f32, tag::a);
  const memory::desc param_md({D}, dt::f32, tag::a);
  const auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
  primitive fwd, bwd;
  std::string impl;
  if (layer_norm) {
    layer_normalization_forward::primitive_desc fpd(
        {prop_kind::forward_training, data_md, stat_md, eps, flags}, eng);
    layer_normalization_backward::primitive_desc bpd(
        {prop_kind::backward, data_md, data_md, stat_md, eps, flags}, eng, fpd);
    fwd = layer_normalization_forward(fpd);
    bwd = layer_normalization_backward(bpd);
    impl = std::string(fpd.impl_info_str()) + " / " + bpd.impl_info_str();
  } else {
    batch_normalization_forward::primitive_desc fpd(
        {prop_kind::forward_training, data_md, eps, flags}, eng);
    batch_normalization_backward::primitive_desc bpd(
        {prop_kind::backward, data_md, data_md, eps, flags}, eng, fpd);
    fwd = batch_normalization_forward(fpd);
    bwd = batch_normalization_backward(bpd);
    impl = std::string(fpd.impl_info_str()) + " / " + bpd.impl_info_str();
  }
  auto mem = [&](const memory::desc& md, auto& v) { return memory(md, eng, v.data()); };
  struct Args {
    std::unordered_map<int, memory> fwd, bwd;
  };
  std::unordered_map<const nb::NormBuffers*, Args> args;  // per buffer set of the ring
  for (size_t i = 0; i < ring.size(); ++i) {
    nb::NormBuffers& b = ring.next();
    const memory src = mem(data_md, b.x), dst = mem(data_md, b.y), ddst = mem(data_md, b.dy),
                 dsrc = mem(data_md, b.dx), mean = mem(stat_md, b.mean), var = mem(stat_md, b.var),
                 scale = mem(param_md, b.gamma), shift = mem(param_md, b.beta),
                 dscale = mem(param_md, b.dgamma), dshift = mem(param_md, b.dbeta);
    args[&b].fwd = {{DNNL_ARG_SRC, src},      {DNNL_ARG_DST, dst},     {DNNL_ARG_MEAN, mean},
                    {DNNL_ARG_VARIANCE, var}, {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}};
    // oneDNN 2.6's backward also asks for the shift (unused by the math).
    args[&b].bwd = {
        {DNNL_ARG_SRC, src},       {DNNL_ARG_DIFF_DST, ddst},     {DNNL_ARG_MEAN, mean},
        {DNNL_ARG_VARIANCE, var},  {DNNL_ARG_SCALE, scale},       {DNNL_ARG_SHIFT, shift},
        {DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_DIFF_SCALE, dscale}, {DNNL_ARG_DIFF_SHIFT, dshift}};
  }
  const std::string label = std::string(nb::cache_name(nb::default_cache(shape))) + ", " + impl;
  run_and_report(state, ring, nb::pass_bytes(p, shape), [&](nb::NormBuffers& b) {
    const Args& a = args.at(&b);
    fwd.execute(strm, a.fwd);
    if (p == nb::Pass::forward_backward) bwd.execute(strm, a.bwd);
    strm.wait();
  });
  state.SetLabel(label);
}

void register_all() {
  auto add = [](const std::string& name, auto fn) {
    auto* bm = benchmark::RegisterBenchmark(name.c_str(), fn);
    for (nb::BenchShape s : nb::default_shapes()) bm->Args({s.N, s.D});
    bm->ArgNames({"N", "D"})->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  add("copy", bm_copy);
  add("read", bm_read);
  add("copy_nt", bm_copy_nt);
  const nb::Pass passes[] = {nb::Pass::forward, nb::Pass::forward_backward};
  for (nb::Kernel k : nb::all_kernels())
    for (nb::Pass p : passes)
      add(std::string(nb::kernel_name(k)) + "_" + (p == nb::Pass::forward ? "fwd" : "fwdbwd"),
          [k, p](benchmark::State& st) { bm_normlab(st, k, p); });
  for (bool ln : {true, false})
    for (nb::Pass p : passes)
      add(std::string("onednn_") + (ln ? "layernorm" : "batchnorm") + "_" +
              (p == nb::Pass::forward ? "fwd" : "fwdbwd"),
          [ln, p](benchmark::State& st) { bm_onednn(st, ln, p); });
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
