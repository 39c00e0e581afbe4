// Conv2d in float through oneDNN's convolution primitives. For each input
// shape the primitives (forward, backward-data, backward-weights) are created
// once with format_tag::any, so oneDNN picks the layout it is fastest in
// (blocked nChw16c / OIhw16i16o on AVX-512); the reorders between that and
// PyTorch's NCHW / OIHW are primitives made once too and run only where the
// layouts differ (profile scopes "conv2d.reorder" count them), and
// backward-weights reuses the forward's reordered x and backward-data's
// reordered dy instead of reordering them again. Scratchpads are
// the layer's own (scratchpad_mode::user), so a training step allocates
// nothing in oneDNN beyond its execution argument maps.
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <unordered_map>

#include "kernels/conv2d.hpp"
#include "kernels/onednn_engine.hpp"
#include "normlab/aligned_vector.hpp"
#include "normlab/error.hpp"
#include "normlab/profile.hpp"

namespace normlab::detail {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

// A user buffer in PyTorch's layout, and where the primitive wants it: the
// same memory when the layouts agree, else an own buffer and the reorder.
struct Slot {
  memory user, own;
  dnnl::reorder to_own, from_own;
  bool same = true;

  Slot() = default;
  Slot(const memory::desc& user_md, const memory::desc& want) {
    user = memory(user_md, cpu_engine(), DNNL_MEMORY_NONE);
    same = user_md == want;
    if (!same) {
      own = memory(want, cpu_engine());
      to_own = dnnl::reorder(user, own);
      from_own = dnnl::reorder(own, user);
    }
  }
  // The memory to give the primitive, with the user data copied in if `in`.
  memory& in(dnnl::stream& s, const void* p) {
    user.set_data_handle(const_cast<void*>(p));
    if (same) return user;
    const profile::Scope t("conv2d.reorder");
    to_own.execute(s, user, own);
    return own;
  }
  memory& out(void* p) {
    user.set_data_handle(p);
    return same ? user : own;
  }
  void finish_out(dnnl::stream& s) {
    if (same) return;
    const profile::Scope t("conv2d.reorder");
    from_own.execute(s, own, user);
  }
};

struct Prims {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  Slot x, w, b, y;             // forward
  Slot dy_d, w_d, dx;          // backward data
  Slot x_w, dy_w, dw;          // backward weights (dw into a scratch, then added)
  memory db;                   // backward weights' bias gradient (scratch, then added)
  memory pad_f, pad_d, pad_w;  // scratchpads
  AlignedVector<float> dw_acc, db_acc;
  // Reorders shared between the passes: backward-weights reads x in the
  // layout the forward reordered it to, and dy in the layout backward-data
  // reordered it to, when those agree (they do for oneDNN's blocked
  // kernels): the copies are reused instead of made again.
  bool x_shared = false, dy_shared = false;
  const void* x_fwd = nullptr;  // the input the forward reordered into x.own
};

}  // namespace

struct ConvCache {
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<Prims>> by_shape;
  dnnl::stream stream{cpu_engine()};
  ConvGeom geom{};  // everything but N, H, W is fixed per layer
};

ConvCache* new_conv_cache() {
  return new ConvCache;
}
void ConvCacheDeleter::operator()(ConvCache* c) const {
  delete c;
}

namespace {

Prims& prims_for(ConvCache& c, const ConvGeom& g, bool has_bias) {
  auto& slot = c.by_shape[{g.N, g.H, g.W}];
  if (slot) return *slot;
  const profile::Scope t("conv2d.create");
  auto p = std::make_unique<Prims>();
  auto& eng = cpu_engine();
  const memory::dims src{g.N, g.C, g.H, g.W}, dst{g.N, g.O, g.OH, g.OW};
  const memory::dims wdims = g.G == 1 ? memory::dims{g.O, g.C, g.KH, g.KW}
                                      : memory::dims{g.G, g.O / g.G, g.C / g.G, g.KH, g.KW};
  const tag wtag = g.G == 1 ? tag::oihw : tag::goihw;
  const memory::dims strides{g.SH, g.SW}, dil{g.DH - 1, g.DW - 1}, pad{g.PH, g.PW};
  const memory::desc src_any(src, dt::f32, tag::any), dst_any(dst, dt::f32, tag::any),
      w_any(wdims, dt::f32, tag::any), b_md({g.O}, dt::f32, tag::x);
  const memory::desc src_u(src, dt::f32, tag::nchw), dst_u(dst, dt::f32, tag::nchw),
      w_u(wdims, dt::f32, wtag);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto alg = dnnl::algorithm::convolution_direct;

  const auto fdesc =
      has_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, src_any,
                                                 w_any, b_md, dst_any, strides, dil, pad, pad)
               : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, src_any,
                                                 w_any, dst_any, strides, dil, pad, pad);
  const dnnl::convolution_forward::primitive_desc fpd(fdesc, attr, eng);
  p->fwd = dnnl::convolution_forward(fpd);
  p->x = Slot(src_u, fpd.src_desc());
  p->w = Slot(w_u, fpd.weights_desc());
  if (has_bias) p->b = Slot(b_md, fpd.bias_desc());
  p->y = Slot(dst_u, fpd.dst_desc());
  p->pad_f = memory(fpd.scratchpad_desc(), eng);

  const dnnl::convolution_backward_data::desc ddesc(alg, src_any, w_any, dst_any, strides, dil, pad,
                                                    pad);
  const dnnl::convolution_backward_data::primitive_desc dpd(ddesc, attr, eng, fpd);
  p->bwd_data = dnnl::convolution_backward_data(dpd);
  p->dy_d = Slot(dst_u, dpd.diff_dst_desc());
  p->w_d = Slot(w_u, dpd.weights_desc());
  p->dx = Slot(src_u, dpd.diff_src_desc());
  p->pad_d = memory(dpd.scratchpad_desc(), eng);

  const auto wdesc = has_bias ? dnnl::convolution_backward_weights::desc(
                                    alg, src_any, w_any, b_md, dst_any, strides, dil, pad, pad)
                              : dnnl::convolution_backward_weights::desc(
                                    alg, src_any, w_any, dst_any, strides, dil, pad, pad);
  const dnnl::convolution_backward_weights::primitive_desc wpd(wdesc, attr, eng, fpd);
  p->bwd_weights = dnnl::convolution_backward_weights(wpd);
  p->x_w = Slot(src_u, wpd.src_desc());
  p->dy_w = Slot(dst_u, wpd.diff_dst_desc());
  p->dw = Slot(w_u, wpd.diff_weights_desc());
  p->dw_acc.resize(static_cast<size_t>(g.O * (g.C / g.G) * g.KH * g.KW));
  if (has_bias) {
    p->db_acc.resize(static_cast<size_t>(g.O));
    p->db = memory(b_md, eng, p->db_acc.data());
  }
  p->pad_w = memory(wpd.scratchpad_desc(), eng);
  p->x_shared = !p->x.same && !p->x_w.same && fpd.src_desc() == wpd.src_desc();
  p->dy_shared = !p->dy_d.same && !p->dy_w.same && dpd.diff_dst_desc() == wpd.diff_dst_desc();
  slot = std::move(p);
  return *slot;
}

void check_geom(ConvCache& c, const ConvGeom& g) {
  ConvGeom fixed = g;
  fixed.N = c.geom.N, fixed.H = c.geom.H, fixed.W = c.geom.W, fixed.OH = c.geom.OH,
  fixed.OW = c.geom.OW;
  if (!(c.geom == ConvGeom{}) && !(fixed == c.geom)) c.by_shape.clear();  // another layer's shape
  c.geom = g;
}

}  // namespace

template <>
void conv2d_forward<float>(ConvCache* c, const ConvGeom& g, const float* x, const float* w,
                           const float* b, float* y) {
  check_geom(*c, g);
  const profile::Scope t("conv2d.forward");
  Prims& p = prims_for(*c, g, b != nullptr);
  auto& s = c->stream;
  p.x_fwd = x;
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, p.x.in(s, x)},
                                       {DNNL_ARG_WEIGHTS, p.w.in(s, w)},
                                       {DNNL_ARG_DST, p.y.out(y)},
                                       {DNNL_ARG_SCRATCHPAD, p.pad_f}};
  if (b) args.emplace(DNNL_ARG_BIAS, p.b.in(s, b));
  p.fwd.execute(s, args);
  p.y.finish_out(s);
  s.wait();
}

template <>
void conv2d_backward<float>(ConvCache* c, const ConvGeom& g, const float* dy, const float* x,
                            const float* w, float* dx, float* dw, float* db) {
  check_geom(*c, g);
  Prims& p = prims_for(*c, g, db != nullptr);
  auto& s = c->stream;
  if (dx) {
    const profile::Scope t("conv2d.backward_data");
    p.bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, p.dy_d.in(s, dy)},
                           {DNNL_ARG_WEIGHTS, p.w_d.in(s, w)},
                           {DNNL_ARG_DIFF_SRC, p.dx.out(dx)},
                           {DNNL_ARG_SCRATCHPAD, p.pad_d}});
    p.dx.finish_out(s);
  }
  {
    const profile::Scope t("conv2d.backward_weights");
    // x as the forward reordered it (the Layer contract keeps the input
    // unchanged until backward), dy as backward-data did.
    memory& xm = p.x_shared && p.x_fwd == x ? p.x.own : p.x_w.in(s, x);
    memory& dym = p.dy_shared && dx ? p.dy_d.own : p.dy_w.in(s, dy);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm},
                                         {DNNL_ARG_DIFF_DST, dym},
                                         {DNNL_ARG_DIFF_WEIGHTS, p.dw.out(p.dw_acc.data())},
                                         {DNNL_ARG_SCRATCHPAD, p.pad_w}};
    if (db) args.emplace(DNNL_ARG_DIFF_BIAS, p.db);
    p.bwd_weights.execute(s, args);
    p.dw.finish_out(s);
  }
  s.wait();
  // Parameter gradients accumulate (the Layer contract).
  const int64_t nw = static_cast<int64_t>(p.dw_acc.size());
  for (int64_t i = 0; i < nw; ++i) dw[i] += p.dw_acc[i];
  if (db)
    for (int64_t o = 0; o < g.O; ++o) db[o] += p.db_acc[o];
}

}  // namespace normlab::detail
