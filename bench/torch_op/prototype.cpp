// A measurement prototype, not part of the package: normlab's float LayerNorm
// kernels as a torch custom op (torch.ops.normlab_proto.layer_norm) with its
// autograd in C++ (torch::autograd::Function), to measure what issue 14's
// "C++ operator path" would save over normlab.torch's Python
// autograd.Function (docs/performance.md, "Python: normlab.torch against
// torch.nn"). float32 only, no argument checks. Built by hand against the PyPI
// torch 2.15 (C++20 required by its headers; Debian's python3-torch 1.13 ships
// no torch/ C++ headers, those are in libtorch-dev) and the PIC libnormlab.a
// that `pip install .` leaves in build-python/:
//
//   TD=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
//   B=build-python/cp311-cp311-linux_x86_64; MPI=/usr/lib/x86_64-linux-gnu/openmpi/lib
//   g++ -std=c++20 -O2 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI=1 -I$TD/include \
//     -I$TD/include/torch/csrc/api/include -Iinclude bench/torch_op/prototype.cpp \
//     -o /tmp/libnormlab_proto.so -L$TD/lib -ltorch -ltorch_cpu -lc10 -Wl,-rpath,$TD/lib \
//     -Wl,-rpath,$MPI $B/libnormlab.a -fopenmp -lz -l:libdnnl.so.2.6 $MPI/libmpi_cxx.so \
//     $MPI/libmpi.so
//   python bench/torch_op/prototype.py /tmp/libnormlab_proto.so
//
// (38 s to compile on the shared 2-core machine.)
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>
#include "normlab/kernels.hpp"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LNFn : public torch::autograd::Function<LNFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& w,
                            const at::Tensor& b, int64_t D, double eps) {
    at::Tensor x = input.contiguous();
    const int64_t N = x.numel() / D;
    at::Tensor out = at::empty_like(x);
    at::Tensor st = at::empty({2 * N}, x.options());
    float* s = st.data_ptr<float>();
    normlab::layernorm_forward<float>(out.data_ptr<float>(), s, s + N, x.data_ptr<float>(),
                                      w.data_ptr<float>(), b.data_ptr<float>(), N, D, (float)eps);
    ctx->save_for_backward({x, w, st});
    ctx->saved_data["D"] = D;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    auto saved = ctx->get_saved_variables();
    at::Tensor x = saved[0], w = saved[1], st = saved[2];
    const int64_t D = ctx->saved_data["D"].toInt();
    const int64_t N = x.numel() / D;
    at::Tensor dy = g[0].contiguous();
    at::Tensor dx = at::empty_like(x), dw = at::zeros_like(w), db = at::zeros_like(w);
    float* s = st.data_ptr<float>();
    normlab::layernorm_backward<float>(dx.data_ptr<float>(), dw.data_ptr<float>(),
                                       db.data_ptr<float>(), dy.data_ptr<float>(),
                                       x.data_ptr<float>(), s, s + N, w.data_ptr<float>(), N, D);
    return {dx, dw, db, at::Tensor(), at::Tensor()};
  }
};

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t D,
                      double eps) {
  return LNFn::apply(x, w, b, D, eps);
}

TORCH_LIBRARY(normlab_proto, m) {
  m.def("layer_norm", &layer_norm);
}
