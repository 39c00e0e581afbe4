// The matrix-product floor of a training epoch: runs exactly the sgemm calls
// one epoch of `normlab train` makes (same shapes, same order, same batch
// sizes including the last partial batch), and nothing else.
//
//   OMP_NUM_THREADS=2 build/bench/normlab_epoch_floor [--model seed001] [--samples 60000]
//       [--batch-size 128] [--repeats 5] [--features 784]
//
// For each linear layer (in -> out) of the model and each batch of B rows:
//   forward   y (B,out)  = x (B,in) @ w^T          2*B*in*out FLOP
//   dx        dx (B,in)  = dy (B,out) @ w          skipped for the first layer
//   dw        dw (out,in) += dy^T @ x
// which is what linear_forward / linear_backward call (src/kernels/linear.cpp).
// Each repeat runs the epoch twice, interleaved: through normlab's gemm (each
// thread multiplies its own slice, src/kernels/gemm.cpp) and through
// dnnl_sgemm called directly (oneDNN's own threading). The floor is the
// faster median. Prints the seconds of each repeat, the medians, GFLOP and
// GFLOP/s, a breakdown per call, and a last line `floor_seconds=... gflop=...`
// for scripts.
//
// Conv2d layers (issue 11): their floor is the oneDNN convolution calls alone
// (forward, backward-data except for the first, backward-weights, and the
// reorders to and from PyTorch's layout), made through Conv2d<float> layers of
// the same shapes fed constant buffers, interleaved with the products in
// layer order. Their FLOP count in the GFLOP figures too.
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "normlab/conv.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/sequential.hpp"

namespace {

using namespace normlab;
using Clock = std::chrono::steady_clock;

struct LinearShape {
  int64_t in, out;
  std::string name;
};

// The linear layers of a model, depth first (nested Sequentials included).
void collect_linears(Layer<float>& layer, std::vector<LinearShape>& out) {
  if (auto* seq = dynamic_cast<Sequential<float>*>(&layer)) {
    for (size_t i = 0; i < seq->size(); ++i) collect_linears((*seq)[i], out);
  } else if (auto* l = dynamic_cast<Linear<float>*>(&layer)) {
    out.push_back({l->weight.dim(1), l->weight.dim(0), l->name()});
  } else if (auto* w = dynamic_cast<WeightNormLinear<float>*>(&layer)) {
    out.push_back({w->weight_v.dim(1), w->weight_v.dim(0), w->name()});
  } else if (auto* nb = dynamic_cast<NotebookWeightNormLinear<float>*>(&layer)) {
    out.push_back({nb->weight.dim(1), nb->weight.dim(0), nb->name()});
  }
}

struct Buffers {
  std::vector<std::vector<float>> act, grad, w, dw;  // act[l]: input of layer l; act[L]: logits
};

double elapsed(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int64_t arg_int(int argc, char** argv, const char* flag, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], flag) == 0) {
      char* end = nullptr;
      const long long v = std::strtoll(argv[i + 1], &end, 10);
      if (*end != '\0' || v <= 0)
        fail(flag, " must be a positive integer, got '", argv[i + 1], "'");
      return v;
    }
  return fallback;
}

std::string arg_str(int argc, char** argv, const char* flag, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], flag) == 0) return argv[i + 1];
  return fallback;
}

int run(int argc, char** argv) {
  const std::string model_spec = arg_str(argc, argv, "--model", "seed001");
  const int64_t samples = arg_int(argc, argv, "--samples", 60000);
  const int64_t batch = arg_int(argc, argv, "--batch-size", 128);
  const int64_t repeats = arg_int(argc, argv, "--repeats", 5);
  const int64_t features = arg_int(argc, argv, "--features", 784);

  Rng rng(0);
  auto model = build_model<float>(model_spec, Shape{batch, features}, rng);
  std::vector<LinearShape> layers;
  collect_linears(*model, layers);
  if (layers.empty()) fail("--model ", model_spec, " has no linear layers: its floor is zero");
  const size_t L = layers.size();
  // The convolutions, with their input shapes (batch dim replaced per batch).
  struct ConvJob {
    std::unique_ptr<Conv2d<float>> layer;
    Shape in;  // (., C, H, W)
    Shape out;
    std::map<int64_t, std::pair<Tensor<float>, Tensor<float>>> xy;  // batch -> (x, dy)
  };
  std::vector<ConvJob> convs;
  for (const LayerPlan& p : plan_model(model_spec, Shape{batch, features}))
    if (p.kind == LayerKind::Conv2d) {
      ConvJob j{std::make_unique<Conv2d<float>>(p.in, p.out, p.kernel, p.conv, rng),
                p.in_shape,
                p.out_shape,
                {}};
      j.layer->set_input_grad(!convs.empty());
      convs.push_back(std::move(j));
    }

  // The batch sizes of an epoch, as the training run's sampler makes them.
  BatchSampler sampler(samples, batch, false, 0, LastBatch::MergeSingle);
  std::vector<int64_t> sizes;
  for (int64_t b = 0; b < sampler.num_batches(); ++b)
    sizes.push_back(static_cast<int64_t>(sampler.batch(b).size()));
  const int64_t max_b = sampler.max_batch_size();

  Buffers buf;
  Rng fill(1);
  auto random = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    fill.fill_uniform(v.data(), n, -0.05, 0.05);
    return v;
  };
  buf.act.push_back(random(max_b * layers[0].in));
  for (size_t l = 0; l < L; ++l) {
    buf.act.push_back(random(max_b * layers[l].out));
    buf.grad.push_back(random(max_b * layers[l].out));  // dy of layer l (input gradient of l+1)
    buf.w.push_back(random(layers[l].out * layers[l].in));
    buf.dw.push_back(std::vector<float>(static_cast<size_t>(layers[l].out * layers[l].in)));
  }

  for (auto& c : convs)
    for (int64_t B : sizes)
      if (!c.xy.count(B)) {
        Shape xs = c.in, ys = c.out;
        xs[0] = ys[0] = B;
        c.xy[B] = {Tensor<float>(xs, 0.01f), Tensor<float>(ys, 0.01f)};
      }
  double flop = 0;
  for (auto& c : convs) {
    const double per_sample = 2.0 * static_cast<double>(c.layer->weight.numel()) *
                              static_cast<double>(c.out[2] * c.out[3]);
    for (int64_t B : sizes) flop += per_sample * B * (c.layer->input_grad() ? 3 : 2);
  }
  for (int64_t B : sizes)
    for (size_t l = 0; l < L; ++l) {
      const double mac = static_cast<double>(B) * layers[l].in * layers[l].out;
      flop += 2 * mac * (l == 0 ? 2 : 3);
    }

  // calls[l][k]: seconds in layer l's forward (k=0), dx (1), dw (2) over the timed epoch.
  std::vector<std::array<double, 3>> calls(L, {0, 0, 0});
  // The product through normlab (raw = false) or straight to oneDNN.
  auto product = [](bool raw, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    if (!raw) return gemm<float>(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc) !=
        dnnl_success)
      fail("dnnl_sgemm failed for M=", M, " N=", N, " K=", K);
  };
  auto epoch = [&](bool per_call, bool raw) {
    auto timed = [&](size_t l, int k, auto&& f) {
      if (!per_call) return f();
      const auto t0 = Clock::now();
      f();
      calls[l][k] += elapsed(t0);
    };
    for (int64_t B : sizes) {
      for (auto& c : convs) c.layer->forward(c.xy[B].first);
      for (size_t l = 0; l < L; ++l) {
        const int64_t I = layers[l].in, O = layers[l].out;
        timed(l, 0, [&] {
          product(raw, false, true, B, O, I, buf.act[l].data(), I, buf.w[l].data(), I, 1.0f,
                  buf.act[l + 1].data(), O);
        });
      }
      for (size_t l = L; l-- > 0;) {
        const int64_t I = layers[l].in, O = layers[l].out;
        // dy of layer l lives in grad[l]; its dx goes to grad[l-1] (the dy of the layer below).
        if (l > 0)
          timed(l, 1, [&] {
            product(raw, false, false, B, I, O, buf.grad[l].data(), O, buf.w[l].data(), I, 0.0f,
                    buf.grad[l - 1].data(), I);
          });
        timed(l, 2, [&] {
          gemm<float>(true, false, O, I, B, 1.0f, buf.grad[l].data(), O, buf.act[l].data(), I, 1.0f,
                      buf.dw[l].data(), I);
        });
      }
      for (size_t c = convs.size(); c-- > 0;) {
        auto& j = convs[c];
        j.layer->backward(j.xy[B].second);  // x and y of this batch's forward above
      }
    }
  };

  std::printf(
      "model %s: %zu conv + %zu linear layers, %zu batches of up to %lld rows (%lld samples), %d "
      "threads\n",
      model_spec.c_str(), convs.size(), L, sizes.size(), static_cast<long long>(max_b),
      static_cast<long long>(samples), omp_get_max_threads());
  epoch(false, false);  // warm-up: oneDNN's JIT kernels, page faults
  epoch(false, true);
  std::vector<double> ours, onednn;
  for (int64_t r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    epoch(false, false);
    ours.push_back(elapsed(t0));
    t0 = Clock::now();
    epoch(false, true);
    onednn.push_back(elapsed(t0));
    std::printf(
        "  repeat %lld: normlab gemm %.3f s (%.1f GFLOP/s), oneDNN threads %.3f s (%.1f GFLOP/s)\n",
        static_cast<long long>(r + 1), ours.back(), flop / ours.back() / 1e9, onednn.back(),
        flop / onednn.back() / 1e9);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double ours_median = median(ours), onednn_median = median(onednn);
  const double floor = std::min(ours_median, onednn_median);

  epoch(true, ours_median > onednn_median);  // the faster way again, timing every call
  std::printf("\n%-34s %10s %10s %10s\n", "per call kind (one timed epoch)", "ms/epoch", "GFLOP",
              "GFLOP/s");
  const char* kind[3] = {"forward", "dx", "dw"};
  for (size_t l = 0; l < L; ++l)
    for (int k = 0; k < 3; ++k) {
      if (l == 0 && k == 1) continue;
      double f = 0;
      for (int64_t B : sizes) f += 2.0 * B * layers[l].in * layers[l].out;
      char label[96];
      std::snprintf(label, sizeof label, "%lld->%lld %s", static_cast<long long>(layers[l].in),
                    static_cast<long long>(layers[l].out), kind[k]);
      std::printf("%-34s %10.1f %10.2f %10.1f\n", label, calls[l][k] * 1e3, f / 1e9,
                  f / calls[l][k] / 1e9);
    }
  std::printf("\nmedians of %lld: normlab gemm %.3f s, oneDNN's threads %.3f s\n",
              static_cast<long long>(repeats), ours_median, onednn_median);
  std::printf("epoch floor: %.3f s, %.1f GFLOP, %.1f GFLOP/s\n", floor, flop / 1e9,
              flop / floor / 1e9);
  std::printf(
      "floor_seconds=%.4f gflop=%.2f gflops=%.1f normlab_gemm_seconds=%.4f onednn_seconds=%.4f\n",
      floor, flop / 1e9, flop / floor / 1e9, ours_median, onednn_median);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const normlab::Error& e) {
    std::fprintf(stderr, "normlab_epoch_floor: error: %s\n", e.what());
    return 2;
  }
}
