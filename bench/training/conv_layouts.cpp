// Times the cnn preset's two convolutions (forward, backward-data,
// backward-weights; batch 128) in three activation layouts: NHWC src/dst,
// oneDNN's own choice (format any: blocked nChw16c / nChw8c), and normlab's
// path (NCHW buffers with reorders to and from oneDNN's choice), and prints
// the implementation oneDNN runs for each (issue 11, part 3; the table in
// docs/performance.md, "Conv layouts"). Fastest of 30 runs, as the machine
// may be shared.
//   OMP_NUM_THREADS=1 build/bench/normlab_conv_layouts
//   ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 build/bench/normlab_conv_layouts
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static double ms_of(const std::function<void()>& f, stream& s, int reps) {
  std::vector<double> t;
  f();
  s.wait();
  for (int r = 0; r < reps; ++r) {
    auto a = std::chrono::steady_clock::now();
    f();
    s.wait();
    t.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[0];  // the fastest: the machine is shared
}

struct Shape {
  const char* name;
  int N, C, H, W, O;
};

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const Shape shapes[] = {{"conv1", 128, 1, 28, 28, 32}, {"conv2", 128, 32, 13, 13, 64}};
  const int reps = 30;
  for (const auto& sh : shapes) {
    const int OH = sh.H - 2, OW = sh.W - 2;
    memory::dims src{sh.N, sh.C, sh.H, sh.W}, dst{sh.N, sh.O, OH, OW}, wd{sh.O, sh.C, 3, 3},
        st{1, 1}, dil{0, 0}, pad{0, 0};
    for (int mode = 0; mode < 3; ++mode) {  // 0 nhwc, 1 any (blocked), 2 nchw user + reorders
      const tag at = mode == 0 ? tag::nhwc : tag::any;
      memory::desc smd(src, dt::f32, at), dmd(dst, dt::f32, at), wmd(wd, dt::f32, tag::any),
          bmd({sh.O}, dt::f32, tag::x);
      convolution_forward::primitive_desc fpd(
          {prop_kind::forward_training, algorithm::convolution_direct, smd, wmd, bmd, dmd, st, dil,
           pad, pad},
          eng);
      convolution_backward_data::primitive_desc dpd(
          {algorithm::convolution_direct, smd, wmd, dmd, st, dil, pad, pad}, eng, fpd);
      convolution_backward_weights::primitive_desc wpd(
          {algorithm::convolution_direct, smd, wmd, bmd, dmd, st, dil, pad, pad}, eng, fpd);
      memory x(fpd.src_desc(), eng), w(fpd.weights_desc(), eng), b(bmd, eng),
          y(fpd.dst_desc(), eng);
      memory dy(dpd.diff_dst_desc(), eng), wD(dpd.weights_desc(), eng),
          dx(dpd.diff_src_desc(), eng);
      memory xw(wpd.src_desc(), eng), dyw(wpd.diff_dst_desc(), eng),
          dw(wpd.diff_weights_desc(), eng), db(bmd, eng);
      for (auto* m : {&x, &w, &b, &y, &dy, &wD, &xw, &dyw}) {
        float* p = static_cast<float*>(m->get_data_handle());
        for (size_t i = 0; i < m->get_desc().get_size() / 4; ++i)
          p[i] = float((i * 7919) % 101) / 101.f - 0.5f;
      }
      convolution_forward fwd(fpd);
      convolution_backward_data bwd(dpd);
      convolution_backward_weights bww(wpd);
      // Current path: user NCHW buffers and reorders (x in, y out, dy in, dx out; bwd-w reuses
      // them).
      memory::desc su(src, dt::f32, tag::nchw), du(dst, dt::f32, tag::nchw);
      memory xu(su, eng), yu(du, eng), dyu(du, eng), dxu(su, eng);
      const bool rx = mode == 2 && su != fpd.src_desc(), ry = mode == 2 && du != fpd.dst_desc();
      const bool rdy = mode == 2 && du != dpd.diff_dst_desc(),
                 rdx = mode == 2 && su != dpd.diff_src_desc();
      // The reorders are primitives made once, as Conv2d's are.
      reorder r_x, r_y, r_dy, r_dx;
      if (rx) r_x = reorder(xu, x);
      if (ry) r_y = reorder(y, yu);
      if (rdy) r_dy = reorder(dyu, dy);
      if (rdx) r_dx = reorder(dx, dxu);
      double tf = ms_of(
          [&] {
            if (rx) r_x.execute(s, xu, x);
            fwd.execute(
                s,
                {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, y}});
            if (ry) r_y.execute(s, y, yu);
          },
          s, reps);
      double td = ms_of(
          [&] {
            if (rdy) r_dy.execute(s, dyu, dy);
            bwd.execute(s,
                        {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, wD}, {DNNL_ARG_DIFF_SRC, dx}});
            if (rdx) r_dx.execute(s, dx, dxu);
          },
          s, reps);
      double tw = ms_of(
          [&] {
            bww.execute(s, {{DNNL_ARG_SRC, xw},
                            {DNNL_ARG_DIFF_DST, dyw},
                            {DNNL_ARG_DIFF_WEIGHTS, dw},
                            {DNNL_ARG_DIFF_BIAS, db}});
          },
          s, reps);
      const char* mname[] = {"nhwc", "blocked(any)", "nchw+reorders"};
      std::printf("%s %-14s fwd %6.2f  bwd_data %6.2f  bwd_w %6.2f  sum %6.2f ms | %s / %s / %s\n",
                  sh.name, mname[mode], tf, td, tw, tf + td + tw, fpd.impl_info_str(),
                  dpd.impl_info_str(), wpd.impl_info_str());
    }
  }
}
