// bench_cuda_attention: the fused causal GQA attention kernels alone, exact fp32 SIMT
// (attention.cuh; backward = the di row dot + dq + dk/dv kernels) against bf16 tensor cores
// (attention_mma.cuh; forward and backward each include packing their fp32 operands to bf16),
// at the golf shape by default (one micro-batch of 16 x 1024 tokens, 8 query heads, 4 kv
// heads, head size 64). The peer is bench/peers/attention_torch.py (PyTorch SDPA, flash).
//
//   ./build-cuda/bench/bench_cuda_attention [--batch 16 --heads 8 --kv-heads 4 --seq 1024
//       --head-dim 64 --reps 20 --scratch-mib 512]
//
// The tensor-core backward runs twice: dq from the score gradients the dk/dv kernel writes to
// scratch (--scratch-mib: cuda::set_attention_scratch, 512 by default) and dq recomputing them
// (scratch 0).
//
// Times are the median of --reps runs between CUDA events, after 3 warm-ups, on random
// inputs. TFLOP/s counts the causal half of the products: forward 2 products (4 B Hq T^2 D / 2
// FLOPs), backward 5 products (2.5x the forward), the convention of FlashAttention's papers.
// The last stdout line is one JSON object.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ternary/backend/cuda/all.cuh"
#include "ternary/ternary.hpp"

using namespace ternary;

namespace {
struct Timing {
  double fwd_ms, bwd_ms;
};

template <class F>
double median_ms(int reps, F&& f) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, cuda::stream());
    f();
    cudaEventRecord(b, cuda::stream());
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int64_t B = 16, Hq = 8, Hkv = 4, T = 1024, D = 64, reps = 20;
  int64_t scratch_mib = int64_t(cuda::attention_scratch() >> 20);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    int64_t* dst = a == "--batch"         ? &B
                   : a == "--heads"       ? &Hq
                   : a == "--kv-heads"    ? &Hkv
                   : a == "--seq"         ? &T
                   : a == "--head-dim"    ? &D
                   : a == "--reps"        ? &reps
                   : a == "--scratch-mib" ? &scratch_mib
                                          : nullptr;
    if (!dst || i + 1 >= argc || (*dst = std::atoll(argv[++i])) <= 0) {
      std::fprintf(stderr,
                   "bench_cuda_attention: bad argument '%s'\nflags: --batch --heads "
                   "--kv-heads --seq --head-dim --reps --scratch-mib (positive integers)\n",
                   argv[i]);
      return 2;
    }
  }
  if (Hq % Hkv) {
    std::fprintf(stderr,
                 "bench_cuda_attention: --heads %lld is not a multiple of --kv-heads %lld\n",
                 (long long)Hq, (long long)Hkv);
    return 2;
  }
  cuda::set_attention_scratch(size_t(scratch_mib) << 20);
  Rng rng(1);
  auto q = to_device(Tensor<float>::randn({B, Hq, T, D}, rng));
  auto k = to_device(Tensor<float>::randn({B, Hkv, T, D}, rng));
  auto v = to_device(Tensor<float>::randn({B, Hkv, T, D}, rng));
  auto dout = to_device(Tensor<float>::randn({B, Hq, T, D}, rng));
  auto out = Tensor<float, cuda>::empty(Shape{B, Hq, T, D});
  auto lse = Tensor<float, cuda>::empty(Shape{B, Hq, T});
  auto dq = Tensor<float, cuda>::empty(Shape{B, Hq, T, D});
  auto dk = Tensor<float, cuda>::empty(Shape{B, Hkv, T, D});
  auto dv = Tensor<float, cuda>::empty(Shape{B, Hkv, T, D});
  const float scale = 1.f / std::sqrt(float(D));
  const double fwd_flops = 4.0 * B * Hq * double(T) * T * D / 2;

  auto time_mode = [&](bool tensor_cores) {
    cuda::set_bf16(tensor_cores);
    Timing t;
    t.fwd_ms = median_ms(
        int(reps), [&] { backend::causal_attention_forward(cuda{}, q, k, v, scale, out, &lse); });
    t.bwd_ms = median_ms(int(reps), [&] {
      backend::causal_attention_backward(cuda{}, q, k, v, out, lse, dout, scale, dq, dk, dv);
    });
    cuda::set_bf16(false);
    return t;
  };
  const Timing f32 = time_mode(false), mma = time_mode(true);
  const size_t scratch = cuda::attention_scratch();
  cuda::set_attention_scratch(0);
  const Timing mma_recompute = time_mode(true);
  cuda::set_attention_scratch(scratch);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  auto tf = [&](double ms, double mult) { return fwd_flops * mult / (ms * 1e-3) / 1e12; };
  std::printf("%s  B %lld Hq %lld Hkv %lld T %lld D %lld\n", prop.name, (long long)B, (long long)Hq,
              (long long)Hkv, (long long)T, (long long)D);
  std::printf("%-22s %10s %10s %12s %12s\n", "kernels", "fwd ms", "bwd ms", "fwd TFLOP/s",
              "bwd TFLOP/s");
  std::printf("%-22s %10.3f %10.3f %12.1f %12.1f\n", "fp32 SIMT", f32.fwd_ms, f32.bwd_ms,
              tf(f32.fwd_ms, 1), tf(f32.bwd_ms, 2.5));
  std::printf("%-22s %10.3f %10.3f %12.1f %12.1f\n", "bf16 mma (tensor cores)", mma.fwd_ms,
              mma.bwd_ms, tf(mma.fwd_ms, 1), tf(mma.bwd_ms, 2.5));
  std::printf("%-22s %10.3f %10.3f %12.1f %12.1f\n", "bf16 mma, dq recomputes",
              mma_recompute.fwd_ms, mma_recompute.bwd_ms, tf(mma_recompute.fwd_ms, 1),
              tf(mma_recompute.bwd_ms, 2.5));
  std::printf(
      "{\"device\": \"%s\", \"B\": %lld, \"Hq\": %lld, \"Hkv\": %lld, \"T\": %lld, \"D\": %lld, "
      "\"fp32_fwd_ms\": %.4f, \"fp32_bwd_ms\": %.4f, \"mma_fwd_ms\": %.4f, \"mma_bwd_ms\": %.4f, "
      "\"mma_bwd_recompute_ms\": %.4f, \"mma_fwd_tflops\": %.2f, \"mma_bwd_tflops\": %.2f}\n",
      prop.name, (long long)B, (long long)Hq, (long long)Hkv, (long long)T, (long long)D,
      f32.fwd_ms, f32.bwd_ms, mma.fwd_ms, mma.bwd_ms, mma_recompute.bwd_ms, tf(mma.fwd_ms, 1),
      tf(mma.bwd_ms, 2.5));
  return 0;
}
