// Kernel benchmarks (Google Benchmark). FLOP/s counters for compute kernels, B/s for
// memory-bound ones; a plain Eigen sgemm and a STREAM-style triad give the machine's peaks
// in the same binary, so ratios are taken within one run. Shapes are those of the GPT of
// docs/benchmarks.md (4 layers, d 256, mlp x4, vocab 1024, 16 x 256 tokens per step).
//
//   ./build-perf/bench/bench_kernels --benchmark_filter=ternary
#include <benchmark/benchmark.h>
#include <omp.h>

// core/simd.hpp before Eigen: it includes <immintrin.h> with GCC 12's false AVX-512 warnings off.
#include "ternary/core/simd.hpp"

#include <Eigen/Core>
#include <cstring>
#include <vector>

#include "ternary/backend/cpu/ternary_gemm.hpp"
#include "ternary/ops/attention.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/softmax.hpp"
#include "ternary/optim/adamw.hpp"
#include "ternary/optim/muon.hpp"
#include "ternary/quant/packing.hpp"

using namespace ternary;

namespace {

constexpr int64_t kTokens = 16 * 256, kDim = 256, kHidden = 1024, kVocab = 1024;

Tensor<float> randn(const Shape& s, uint64_t seed = 1) {
  Rng rng(seed);
  return Tensor<float>::randn(s, rng, 0, 1);
}
void flops(benchmark::State& st, double per_iter) {
  st.counters["FLOP/s"] =
      benchmark::Counter(per_iter, benchmark::Counter::kIsIterationInvariantRate);
}
void bytes(benchmark::State& st, double per_iter) {
  st.counters["B/s"] = benchmark::Counter(per_iter, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- peaks ----------------------------------------------------------------------------------
// Plain Eigen sgemm C = A B (square, column-major), one independent product per thread: the
// FLOP rate Eigen's kernel reaches on `threads` cores with no partitioning overhead.
void BM_eigen_sgemm_peak(benchmark::State& st) {
  const int n = int(st.range(0)), threads = int(st.range(1));
  std::vector<Eigen::MatrixXf> A(threads), B(threads), C(threads);
  for (int t = 0; t < threads; ++t) {
    A[t] = Eigen::MatrixXf::Random(n, n);
    B[t] = Eigen::MatrixXf::Random(n, n);
    C[t] = Eigen::MatrixXf::Zero(n, n);
  }
  for (auto _ : st) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; ++t) C[t].noalias() = A[t] * B[t];
    benchmark::DoNotOptimize(C[0].data());
  }
  flops(st, 2.0 * n * n * n * threads);
}
BENCHMARK(BM_eigen_sgemm_peak)
    ->ArgNames({"n", "threads"})
    ->Args({512, 1})
    ->Args({1024, 1})
    ->Args({1024, 2})
    ->Args({2048, 2})
    ->UseRealTime();

// STREAM triad a = b + s c over n floats per array (3 arrays: 2 reads, 1 write), all threads.
void BM_triad(benchmark::State& st) {
  const int64_t n = st.range(0);
  std::vector<float> a(n), b(n, 1.f), c(n, 2.f);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = 0;  // first touch by the threads that use it
  for (auto _ : st) {
    float* ap = a.data();
    const float *bp = b.data(), *cp = c.data();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) ap[i] = bp[i] + 3.f * cp[i];
    benchmark::ClobberMemory();
  }
  bytes(st, 3.0 * 4 * n);
}
// 3 x 64 MiB (DRAM) and 3 x 2 MiB (in the 32 MiB L3, like a 4 MiB packed ternary matrix).
BENCHMARK(BM_triad)->Arg(int64_t(16) << 20)->Arg(int64_t(512) << 10)->UseRealTime();

// ---- matmul ---------------------------------------------------------------------------------
// Square C = A B through ternary::matmul (our packed GEMM, backend/cpu/gemm_kernel.hpp).
void BM_matmul_square(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto a = randn({n, n}, 1), b = randn({n, n}, 2);
  for (auto _ : st) benchmark::DoNotOptimize(matmul(a, b).data());
  flops(st, 2.0 * n * n * n);
}
BENCHMARK(BM_matmul_square)->RangeMultiplier(2)->Range(256, 2048)->UseRealTime();

// Our packed GEMM (backend/cpu/gemm_kernel.hpp) against the Eigen path it replaced, same
// row-major operands C[M, N] = A[M, K] B[K, N], `threads` OpenMP threads (both split C the
// same way and stay on one thread below 2^26 multiply-adds).
template <bool Ours>
void BM_gemm(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const int threads = int(st.range(3)), saved = omp_get_max_threads();
  auto a = randn({M, K}, 1), b = randn({K, N}, 2), c = Tensor<float>::empty({M, N});
  const MatView<const float> av{a.data(), M, K, K, 1}, bv{b.data(), K, N, N, 1};
  const MatView<float> cv{c.data(), M, N, N, 1};
  omp_set_num_threads(threads);
  for (auto _ : st) {
    if constexpr (Ours)
      backend::gemm_packed(cpu{}, av, bv, cv, 1.f, 0.f);
    else
      backend::gemm_eigen(cpu{}, av, bv, cv, 1.f, 0.f);
    benchmark::DoNotOptimize(c.data());
  }
  omp_set_num_threads(saved);
  flops(st, 2.0 * M * N * K);
}
void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K", "threads"});
  for (int64_t t : {1, 2}) {
    b->Args({kTokens, kHidden, kDim, t})->Args({kTokens, kDim, kHidden, t});
    b->Args({kTokens, kDim, kDim, t})->Args({1024, 1024, 256, t});
    for (int64_t n = 256; n <= 2048; n *= 2) b->Args({n, n, n, t});
  }
  b->UseRealTime();
}
BENCHMARK(BM_gemm<true>)->Name("BM_gemm_ours")->Apply(gemm_shapes);
BENCHMARK(BM_gemm<false>)->Name("BM_gemm_eigen")->Apply(gemm_shapes);

// The three products of a linear layer y = x W^T (W [N, K]) at the GPT's shapes:
//   fwd: [M, K] x [K, N]   dx: g W = [M, N] x [N, K]   dw: g^T x = [N, M] x [M, K]
void BM_linear(benchmark::State& st) {
  const int64_t M = st.range(0), K = st.range(1), N = st.range(2), which = st.range(3);
  auto x = randn({M, K}, 1), w = randn({N, K}, 2), g = randn({M, N}, 3);
  for (auto _ : st) {
    if (which == 0)
      benchmark::DoNotOptimize(matmul(x, w.t()).data());
    else if (which == 1)
      benchmark::DoNotOptimize(matmul(g, w).data());
    else
      benchmark::DoNotOptimize(matmul(g.t(), x).data());
  }
  flops(st, 2.0 * M * K * N);
}
BENCHMARK(BM_linear)
    ->ArgNames({"M", "K", "N", "fwd0_dx1_dw2"})
    ->ArgsProduct({{kTokens}, {kDim}, {kDim}, {0, 1, 2}})     // q, k, v, attn proj
    ->ArgsProduct({{kTokens}, {kDim}, {kHidden}, {0, 1, 2}})  // mlp fc
    ->ArgsProduct({{kTokens}, {kHidden}, {kDim}, {0, 1, 2}})  // mlp proj
    ->ArgsProduct({{kTokens}, {kDim}, {kVocab}, {0, 1, 2}})   // tied output head
    ->UseRealTime();

// ---- GEMV: fp32 vs ternary ------------------------------------------------------------------
// Our fp32 GEMV y = W x (ternary::matmul of a [1, K] row by W^T) and a 2-thread Eigen GEMV
// split by rows, the best fp32 GEMV we know of here. Bytes: the weights (4 N K).
void BM_fp32_gemv(benchmark::State& st) {
  const int64_t N = st.range(0), K = st.range(1);
  auto w = randn({N, K}, 1), x = randn({1, K}, 2);
  for (auto _ : st) benchmark::DoNotOptimize(matmul(x, w.t()).data());
  bytes(st, 4.0 * N * K);
  flops(st, 2.0 * N * K);
}
BENCHMARK(BM_fp32_gemv)->Args({4096, 4096})->Args({kHidden, kDim})->UseRealTime();

void BM_fp32_gemv_eigen_rows(benchmark::State& st) {
  const int64_t N = st.range(0), K = st.range(1);
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMat W = RowMat::Random(N, K);
  Eigen::VectorXf x = Eigen::VectorXf::Random(K), y(N);
  for (auto _ : st) {
#pragma omp parallel
    {
      const int T = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = N * t / T, r1 = N * (t + 1) / T;
      y.segment(r0, r1 - r0).noalias() = W.middleRows(r0, r1 - r0) * x;
    }
    benchmark::DoNotOptimize(y.data());
  }
  bytes(st, 4.0 * N * K);
  flops(st, 2.0 * N * K);
}
BENCHMARK(BM_fp32_gemv_eigen_rows)->Args({4096, 4096})->UseRealTime();

// int8 activations [rows, K] x packed trits [N, K] (one scale per weight row). Bytes: what the
// kernel must read, the packed weights N K / 4 plus the activations and scales.
template <bool Fast>
void BM_ternary_gemm(benchmark::State& st) {
  const int64_t rows = st.range(0), K = st.range(1), N = st.range(2);
  Rng rng(3);
  std::vector<int8_t> act(rows * K), trits(N * K);
  for (auto& a : act) a = int8_t(int(rng.next_u64() % 255) - 127);
  for (auto& t : trits) t = int8_t(int(rng.next_u64() % 3) - 1);
  const auto packed = pack_trits_2bit(trits);
  std::vector<float> ascale(rows, 0.1f), wscale(N, 0.02f), out(rows * N);
  for (auto _ : st) {
    if constexpr (Fast)
      backend::ternary_gemm(cpu{}, act.data(), ascale.data(), rows, K, packed.data(), wscale.data(),
                            K, N, out.data());
    else
      backend::ternary_gemm_reference(cpu{}, act.data(), ascale.data(), rows, K, packed.data(),
                                      wscale.data(), K, N, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  bytes(st, double(N * K / 4 + rows * K + 4 * N + 4 * rows));
  flops(st, 2.0 * rows * N * K);
}
void ternary_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "K", "N"});
  b->Args({1, 4096, 4096})->Args({16, 4096, 4096});
  for (int64_t rows : {1, 16, 256}) {
    b->Args({rows, kDim, kDim})->Args({rows, kDim, kHidden})->Args({rows, kHidden, kDim});
  }
  b->UseRealTime();
}
BENCHMARK(BM_ternary_gemm<true>)->Name("BM_ternary_gemm_fast")->Apply(ternary_shapes);
BENCHMARK(BM_ternary_gemm<false>)->Name("BM_ternary_gemm_reference")->Apply(ternary_shapes);

// ---- row kernels ----------------------------------------------------------------------------
void BM_rms_norm_fwd(benchmark::State& st) {
  const int64_t rows = st.range(0), D = st.range(1);
  auto x = randn({rows, D}), gain = randn({D}, 2), y = Tensor<float>::empty({rows, D});
  auto rstd = Tensor<float>::empty({rows});
  for (auto _ : st) backend::rms_norm_forward(cpu{}, x, gain, y, rstd, 1e-6);
  bytes(st, 2.0 * 4 * rows * D);
}
BENCHMARK(BM_rms_norm_fwd)->Args({kTokens, kDim})->Args({kTokens, kHidden})->UseRealTime();

void BM_rms_norm_bwd(benchmark::State& st) {
  const int64_t rows = st.range(0), D = st.range(1);
  auto x = randn({rows, D}), gain = randn({D}, 2), y = Tensor<float>::empty({rows, D});
  auto rstd = Tensor<float>::empty({rows}), g = randn({rows, D}, 3),
       dx = Tensor<float>::empty({rows, D});
  auto dgain = Tensor<float>::empty({D});
  backend::rms_norm_forward(cpu{}, x, gain, y, rstd, 1e-6);
  for (auto _ : st) backend::rms_norm_backward(cpu{}, x, gain, rstd, g, dx, dgain);
  bytes(st, 3.0 * 4 * rows * D);
}
BENCHMARK(BM_rms_norm_bwd)->Args({kTokens, kDim})->Args({kTokens, kHidden})->UseRealTime();

void BM_softmax_fwd(benchmark::State& st) {
  const int64_t rows = st.range(0), n = st.range(1);
  auto x = randn({rows, n}), y = Tensor<float>::empty({rows, n});
  for (auto _ : st) backend::softmax_forward(cpu{}, x, y, false);
  bytes(st, 2.0 * 4 * rows * n);
}
BENCHMARK(BM_softmax_fwd)->Args({kTokens, kVocab})->UseRealTime();

void BM_softmax_bwd(benchmark::State& st) {
  const int64_t rows = st.range(0), n = st.range(1);
  auto x = randn({rows, n}), y = Tensor<float>::empty({rows, n}), g = randn({rows, n}, 2);
  auto dx = Tensor<float>::empty({rows, n});
  backend::softmax_forward(cpu{}, x, y, false);
  for (auto _ : st) backend::softmax_backward(cpu{}, y, g, dx, false);
  bytes(st, 3.0 * 4 * rows * n);
}
BENCHMARK(BM_softmax_bwd)->Args({kTokens, kVocab})->UseRealTime();

// Softcapped cross-entropy over [tokens, vocab] logits, forward then backward (as training).
void BM_cross_entropy_fwd_bwd(benchmark::State& st) {
  const int64_t rows = st.range(0), V = st.range(1);
  auto logits = Var<float>::parameter(randn({rows, V}));
  auto targets = Tensor<int32_t>::empty({rows});
  for (int64_t i = 0; i < rows; ++i) targets.data()[i] = int32_t((i * 7919) % V);
  for (auto _ : st) {
    auto loss = softcap_cross_entropy(logits, targets, 30.0);
    loss.backward();
    logits.zero_grad();
  }
  bytes(st, 2.0 * 4 * rows * V);
}
BENCHMARK(BM_cross_entropy_fwd_bwd)->Args({kTokens, kVocab})->UseRealTime();

// ---- attention ------------------------------------------------------------------------------
// Causal attention [B, H, T, Dh]; FLOPs: 2 products of T^2/2 x Dh multiply-adds per head
// forward (4 B H T^2 Dh / 2), about twice that backward.
void BM_attention(benchmark::State& st) {
  const int64_t B = st.range(0), H = st.range(1), T = st.range(2), Dh = st.range(3),
                bwd = st.range(4);
  auto q = Var<float>::parameter(randn({B, H, T, Dh}, 1)),
       k = Var<float>::parameter(randn({B, H, T, Dh}, 2));
  auto v = Var<float>::parameter(randn({B, H, T, Dh}, 3));
  for (auto _ : st) {
    if (bwd) {
      auto y = causal_attention(q, k, v);
      sum(y).backward();
      q.zero_grad(), k.zero_grad(), v.zero_grad();
    } else {
      NoGrad ng;
      benchmark::DoNotOptimize(causal_attention(q, k, v).value().data());
    }
  }
  const double fwd = 2.0 * B * H * T * T * Dh;  // (QK^T + PV) over the causal half
  flops(st, bwd ? 3 * fwd : fwd);
}
BENCHMARK(BM_attention)
    ->ArgNames({"B", "H", "T", "Dh", "fwd_bwd"})
    ->Args({16, 4, 256, 64, 0})
    ->Args({16, 4, 256, 64, 1})
    ->UseRealTime();

// ---- optimizers -----------------------------------------------------------------------------
// AdamW over the GPT's parameter count in [1024, 256] tensors; B/s: p, g, m, v read, p, m, v
// written.
void BM_adamw_step(benchmark::State& st) {
  const int64_t n_tensors = st.range(0);
  std::vector<Var<float>> ps;
  for (int64_t i = 0; i < n_tensors; ++i) {
    ps.push_back(Var<float>::parameter(randn({kHidden, kDim}, i + 1)));
    ps.back().accumulate_grad(randn({kHidden, kDim}, i + 100));
  }
  optim::AdamW<float> opt(ps, {1e-3, 0.9, 0.95, 1e-8, 0.0});
  for (auto _ : st) opt.step();
  bytes(st, 7.0 * 4 * n_tensors * kHidden * kDim);
}
BENCHMARK(BM_adamw_step)->Arg(12)->UseRealTime();

// Muon on one [1024, 256] matrix (the mlp fc); FLOPs are Newton-Schulz's 5 x (3 products).
void BM_muon_step(benchmark::State& st) {
  const int64_t rows = st.range(0), cols = st.range(1);
  auto p = Var<float>::parameter(randn({rows, cols}, 1));
  p.accumulate_grad(randn({rows, cols}, 2));
  optim::Muon<float> opt({p}, {});
  for (auto _ : st) opt.step();
  const double r = std::min(rows, cols), c = std::max(rows, cols);
  flops(st, 5.0 * (2 * r * r * c + 2 * r * r * r + 2 * r * r * c));
}
BENCHMARK(BM_muon_step)->Args({kHidden, kDim})->Args({kDim, kDim})->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
