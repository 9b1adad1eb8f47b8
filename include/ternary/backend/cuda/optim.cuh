// CUDA kernels for the optimizers (optim/): their elementwise updates and norms over many tensors
// in one launch each, so that a step's ~90 small tensors cost a handful of launches, not ~700.
//  - adamw_update_runs, momentum_runs, decay_step_runs, scale_runs: the runs of
//    backend/multi_update.hpp (AdamW's m, v and p; Muon's momentum and its weight update; the
//    gradient clip's scaling), each value computed as the CPU's expressions compute it.
//  - squared_norm / squared_norm_sum: sum of x^2 in double over one tensor or a list (the
//    gradient clip's total), one launch for the list and one host copy for the result.
//  - scale_by_inverse_norm(s): x *= 1 / (||x|| + eps) with the norm kept on the device, for one
//    tensor or each matrix of a stack [n, ...] (Muon's Newton-Schulz normalisation).
// Sums of squares run per block in double, then one double atomicAdd per block (the order of
// the blocks' additions varies: last-bit differences from run to run).
//
// How a launch covers many runs: up to kRunsPerLaunch runs travel by value in the kernel's
// parameter (__grid_constant__: read in place, no upload, no copy to local memory). The grid has
// one block per chunk of kRunChunk values, numbered through the runs in order, and a block finds
// its run by scanning the cumulative chunk counts (at most kRunsPerLaunch entries).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ternary/backend/cuda/elementwise.cuh"
#include "ternary/backend/cuda/reduce.cuh"
#include "ternary/backend/multi_update.hpp"

namespace ternary::backend::cuda_detail {

constexpr int kRunsPerLaunch = 32;
constexpr int kRunChunk = 4096;  // values per block: 16 per thread
constexpr int kRunThreads = 256;

template <class Run>
struct RunBatch {
  Run run[kRunsPerLaunch];
  int64_t chunk_end[kRunsPerLaunch];  // chunks of runs 0..i together
  int count;
};

// Block b works on chunk b - chunk_end[r - 1] of run r; op(run, base + r, begin, end) with every
// thread of the block (ops may sum over the block).
template <class Run, class Op>
__global__ void __launch_bounds__(kRunThreads)
    runs_kernel(const __grid_constant__ RunBatch<Run> batch, int base, Op op) {
  const int64_t b = blockIdx.x;
  int r = 0;
  while (r + 1 < batch.count && b >= batch.chunk_end[r]) ++r;
  const int64_t first = r ? batch.chunk_end[r - 1] : 0;
  const Run& run = batch.run[r];
  const int64_t begin = (b - first) * kRunChunk;
  op(run, base + r, begin, min(run.n, begin + kRunChunk));
}

template <class Run, class Op>
void launch_runs(const std::vector<Run>& runs, Op op, const char* name) {
  for (size_t s = 0; s < runs.size(); s += kRunsPerLaunch) {
    RunBatch<Run> batch{};
    int64_t chunks = 0;
    for (size_t i = s; i < std::min(runs.size(), s + kRunsPerLaunch); ++i) {
      batch.run[batch.count] = runs[i];
      chunks += (runs[i].n + kRunChunk - 1) / kRunChunk;
      batch.chunk_end[batch.count++] = chunks;
    }
    if (chunks == 0) continue;
    runs_kernel<<<unsigned(chunks), kRunThreads, 0, cuda::stream()>>>(batch, int(s), op);
    check(cudaGetLastError(), name, __FILE__, __LINE__);  // (name: "launch of ...")
  }
}

template <class T>
struct AdamWOp {
  __device__ void operator()(const AdamWRun<T>& r, int, int64_t begin, int64_t end) const {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const T g = r.g[i];
      const T m = r.m[i] * r.beta1 + g * r.one_minus_beta1;
      const T v = r.v[i] * r.beta2 + (g * g) * r.one_minus_beta2;
      r.m[i] = m;
      r.v[i] = v;
      r.p[i] = r.p[i] * r.decay - m * r.step_size / (::sqrt(v) / r.bc2_sqrt + r.eps);
    }
  }
};

template <class T>
struct MomentumOp {
  __device__ void operator()(const MomentumRun<T>& r, int, int64_t begin, int64_t end) const {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const T g = r.g[i];
      const T buf = r.buf[i] * r.momentum + g;
      r.buf[i] = buf;
      if (r.eff) r.eff[i] = r.nesterov ? g + buf * r.momentum : buf;
    }
  }
};

template <class T>
struct DecayStepOp {
  __device__ void operator()(const DecayStepRun<T>& r, int, int64_t begin, int64_t end) const {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      r.p[i] = r.p[i] * r.decay - r.o[i] * r.step;
  }
};

template <class T>
struct ScaleOp {
  T factor;
  __device__ void operator()(const ValueRun<T>& r, int, int64_t begin, int64_t end) const {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) r.x[i] *= factor;
  }
};

// acc[0] (or acc[run], per_run) += the block's sum of x^2 in double.
template <class T>
struct SumSquaresOp {
  double* acc;
  bool per_run;
  __device__ void operator()(const ValueRun<T>& r, int run, int64_t begin, int64_t end) const {
    double s = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += double(r.x[i]) * r.x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(acc + (per_run ? run : 0), s);
  }
};

// x *= 1 / (sqrt(sq[run]) + eps), the factor rounded to T once (as the CPU's).
template <class T>
struct ScaleByInverseNormOp {
  const double* sq;
  double eps;
  __device__ void operator()(const ValueRun<T>& r, int run, int64_t begin, int64_t end) const {
    const T f = T(1.0 / (::sqrt(sq[run]) + eps));
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) r.x[i] *= f;
  }
};

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
void adamw_update_runs(cuda, const std::vector<AdamWRun<T>>& runs) {
  cuda_detail::launch_runs(runs, cuda_detail::AdamWOp<T>{}, "launch of adamw runs_kernel");
}

template <class T>
void momentum_runs(cuda, const std::vector<MomentumRun<T>>& runs) {
  cuda_detail::launch_runs(runs, cuda_detail::MomentumOp<T>{}, "launch of momentum runs_kernel");
}

template <class T>
void decay_step_runs(cuda, const std::vector<DecayStepRun<T>>& runs) {
  cuda_detail::launch_runs(runs, cuda_detail::DecayStepOp<T>{}, "launch of decay_step runs_kernel");
}

template <class T>
void scale_runs(cuda, const std::vector<ValueRun<T>>& runs, T factor) {
  cuda_detail::launch_runs(runs, cuda_detail::ScaleOp<T>{factor}, "launch of scale runs_kernel");
}

template <class T>
double squared_norm_sum(cuda, const std::vector<Tensor<T, cuda>>& xs) {
  std::vector<Tensor<T, cuda>> kept;  // contiguous copies of strided ones, alive to the launch
  std::vector<ValueRun<T>> runs;
  for (const auto& x : xs) {
    const Tensor<T, cuda> c = x.contiguous();
    if (c.data() != x.data()) kept.push_back(c);
    runs.push_back({const_cast<T*>(c.data()), c.numel()});  // (only read)
  }
  auto acc = Tensor<double, cuda>::zeros(Shape{1});
  cuda_detail::launch_runs(runs, cuda_detail::SumSquaresOp<T>{acc.data(), false},
                           "launch of sum_squares runs_kernel");
  return acc.item();
}

template <class T>
double squared_norm(cuda, const Tensor<T, cuda>& x) {
  return squared_norm_sum(cuda{}, std::vector<Tensor<T, cuda>>{x});
}

// Each of x's n = x.size(0) sub-tensors by its own norm (x contiguous).
template <class T>
void scale_by_inverse_norms(cuda, Tensor<T, cuda>& x, double eps) {
  if (!x.is_contiguous() || x.dim() < 1)
    throw ShapeError(detail::cat("scale_by_inverse_norms(cuda): needs a contiguous stack, got ",
                                 x.shape(), " with strides ", x.strides()));
  const int64_t n = x.size(0), each = n ? x.numel() / n : 0;
  if (n == 0) return;
  std::vector<ValueRun<T>> runs;
  for (int64_t i = 0; i < n; ++i) runs.push_back({x.data() + i * each, each});
  auto sq = Tensor<double, cuda>::zeros(Shape{n});
  cuda_detail::launch_runs(runs, cuda_detail::SumSquaresOp<T>{sq.data(), true},
                           "launch of sum_squares runs_kernel");
  cuda_detail::launch_runs(runs, cuda_detail::ScaleByInverseNormOp<T>{sq.data(), eps},
                           "launch of scale_inverse_norm runs_kernel");
}

template <class T>
void scale_by_inverse_norm(cuda, Tensor<T, cuda>& x, double eps) {
  if (!x.is_contiguous())
    throw ShapeError(detail::cat("scale_by_inverse_norm(cuda): needs a contiguous tensor, got ",
                                 x.shape(), " with strides ", x.strides()));
  Tensor<T, cuda> one = x.reshape(Shape{1, x.numel()});
  scale_by_inverse_norms(cuda{}, one, eps);
}

}  // namespace ternary::backend
