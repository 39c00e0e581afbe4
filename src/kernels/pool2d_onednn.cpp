// AvgPool2d and AdaptiveAvgPool2d (on whole windows) in float through
// oneDNN's pooling primitives, on the layers' NCHW buffers as they are (no
// reorders), where oneDNN has a JIT kernel for them (AVX-512 in oneDNN 2.6). Measured against the
// plain loops they replace (bench/training/pool_onednn.cpp, docs/performance.md "Pooling: normlab's
// kernels against oneDNN's"). The primitives are made once per input shape
// (training and evaluation batches differ) with their scratchpads, so a step
// allocates nothing. MaxPool2d stays on normlab's 2x2 kernels
// (pool2d_fast.cpp), which the same bench found as fast on NCHW.
#include <map>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>

#include "kernels/onednn_engine.hpp"
#include "kernels/pool2d_onednn.hpp"
#include "normlab/profile.hpp"

namespace normlab::detail {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct AvgPoolPrims {
  dnnl::pooling_forward fwd;
  dnnl::pooling_backward bwd;
  memory x, y, dy, dx, pad_f, pad_b;
  bool jit = false;  // both passes have a JIT kernel for NCHW
};

struct AvgPoolCache {
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<AvgPoolPrims>> by_shape;
  dnnl::stream stream{cpu_engine()};
};

AvgPoolCache* new_avgpool_cache() {
  return new AvgPoolCache;
}
void AvgPoolCacheDeleter::operator()(AvgPoolCache* c) const {
  delete c;
}

namespace {

// Everything but N, H and W is fixed per layer, so those three key the shapes.
AvgPoolPrims& prims_for(AvgPoolCache& c, const AvgPoolGeom& g) {
  auto& slot = c.by_shape[{g.N, g.H, g.W}];
  if (slot) return *slot;
  const profile::Scope t("avgpool2d.create");
  auto p = std::make_unique<AvgPoolPrims>();
  auto& eng = cpu_engine();
  const memory::desc src({g.N, g.C, g.H, g.W}, dt::f32, tag::nchw),
      dst({g.N, g.C, g.OH, g.OW}, dt::f32, tag::nchw);
  const memory::dims strides{g.SH, g.SW}, kernel{g.KH, g.KW}, pad{g.PH, g.PW};
  // PyTorch's count_include_pad divides by the whole window (without
  // ceil_mode a window never reaches past the padding), oneDNN's
  // include_padding too; exclude_padding divides by the values inside.
  const auto alg = g.count_include_pad ? dnnl::algorithm::pooling_avg_include_padding
                                       : dnnl::algorithm::pooling_avg_exclude_padding;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::pooling_forward::primitive_desc fpd(
      {dnnl::prop_kind::forward_training, alg, src, dst, strides, kernel, pad, pad}, attr, eng);
  const dnnl::pooling_backward::primitive_desc bpd({alg, src, dst, strides, kernel, pad, pad}, attr,
                                                   eng, fpd);
  // oneDNN 2.6 has JIT kernels for NCHW pooling on AVX-512 only; elsewhere it
  // runs simple_nchw / ref loops, 1.3-4x slower than the layers' own loops
  // (bench/training/pool_onednn.cpp with ONEDNN_MAX_CPU_ISA=AVX2), so those
  // shapes stay on the loops.
  const auto is_jit = [](const char* impl) { return std::string(impl).rfind("jit", 0) == 0; };
  p->jit = is_jit(fpd.impl_info_str()) && is_jit(bpd.impl_info_str());
  p->fwd = dnnl::pooling_forward(fpd);
  p->bwd = dnnl::pooling_backward(bpd);
  p->x = memory(src, eng, DNNL_MEMORY_NONE);
  p->y = memory(dst, eng, DNNL_MEMORY_NONE);
  p->dy = memory(dst, eng, DNNL_MEMORY_NONE);
  p->dx = memory(src, eng, DNNL_MEMORY_NONE);
  p->pad_f = memory(fpd.scratchpad_desc(), eng);
  p->pad_b = memory(bpd.scratchpad_desc(), eng);
  slot = std::move(p);
  return *slot;
}

}  // namespace

bool avgpool2d_forward(AvgPoolCache* cache, const AvgPoolGeom& g, const float* x, float* y) {
  AvgPoolPrims& p = prims_for(*cache, g);
  if (!p.jit) return false;
  p.x.set_data_handle(const_cast<float*>(x));
  p.y.set_data_handle(y);
  p.fwd.execute(cache->stream,
                {{DNNL_ARG_SRC, p.x}, {DNNL_ARG_DST, p.y}, {DNNL_ARG_SCRATCHPAD, p.pad_f}});
  cache->stream.wait();
  return true;
}

bool avgpool2d_backward(AvgPoolCache* cache, const AvgPoolGeom& g, const float* dy, float* dx) {
  AvgPoolPrims& p = prims_for(*cache, g);
  if (!p.jit) return false;
  p.dy.set_data_handle(const_cast<float*>(dy));
  p.dx.set_data_handle(dx);
  p.bwd.execute(
      cache->stream,
      {{DNNL_ARG_DIFF_DST, p.dy}, {DNNL_ARG_DIFF_SRC, p.dx}, {DNNL_ARG_SCRATCHPAD, p.pad_b}});
  cache->stream.wait();
  return true;
}

}  // namespace normlab::detail
