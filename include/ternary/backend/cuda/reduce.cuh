// CUDA reduction kernels: sum over a set of axes (the CPU's reduce_sum, backend/cpu/reduce.hpp,
// with the same plan and the same keepdim output shape). Two kernels, chosen by layout:
//  - rows: the reduced axes are trailing and contiguous: one block per output element, each
//    thread sums a strided part of the row, then a warp-shuffle + shared-memory tree;
//  - columns: the reduced axes are leading (a bias gradient summed over batch and time): a
//    block covers 32 adjacent output columns (coalesced reads) with 8 lanes of rows each.
// Any other layout is permuted so the reduced axes come last and made contiguous (one
// strided copy kernel), then takes the rows path. Accumulation is in T (float or double).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <vector>

#include "ternary/backend/cpu/reduce.hpp"  // plan_reduction (host-side shape logic only)
#include "ternary/backend/cuda/elementwise.cuh"

namespace ternary::backend::cuda_detail {

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); valid in thread 0.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();  // warp_sums may be reused by the caller's next call
  return v;
}

// out[r] = sum_j x[r * inner + j]
template <class T>
__global__ void sum_rows_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                int64_t inner) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * inner;
    T s = T(0);
    for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) s += row[j];
    s = block_sum(s);
    if (threadIdx.x == 0) out[r] = s;
  }
}

// out[j] = sum_i x[i * cols + j]; block (32, 8): x = column within the block's 32, y = row lane.
template <class T>
__global__ void sum_cols_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                int64_t cols) {
  __shared__ T part[8][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  T s = T(0);
  if (j < cols)
    for (int64_t i = threadIdx.y; i < rows; i += 8) s += x[i * cols + j];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    T t = T(0);
    for (int k = 0; k < 8; ++k) t += part[k][threadIdx.x];
    out[j] = t;
  }
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

// Sum over `axes` (already normalized, unique). Returns the keepdim shape; callers squeeze.
template <class T>
Tensor<T, cuda> reduce_sum(cuda, const Tensor<T, cuda>& x, const std::vector<int>& axes) {
  using namespace cuda_detail;
  const cpu_detail::ReducePlan p = cpu_detail::plan_reduction(x.shape(), axes);
  auto out = Tensor<T, cuda>::empty(p.out_keepdim);
  const int64_t n_out = out.numel();
  if (n_out == 0) return out;
  if (x.numel() == 0) return out.fill(T(0));
  const int64_t inner = x.numel() / n_out;
  if (p.leading && !p.trailing && x.is_contiguous()) {
    const int64_t rows = inner, cols = n_out;
    sum_cols_kernel<<<unsigned((cols + 31) / 32), dim3(32, 8), 0, cuda::stream()>>>(
        x.data(), out.data(), rows, cols);
    TERNARY_CUDA_CHECK_LAUNCH("sum_cols_kernel");
    return out;
  }
  Tensor<T, cuda> rows = x;
  if (!(p.trailing && x.is_contiguous())) {
    std::vector<int64_t> order;
    for (int i = 0; i < x.dim(); ++i)
      if (!p.reduced[i]) order.push_back(i);
    for (int i = 0; i < x.dim(); ++i)
      if (p.reduced[i]) order.push_back(i);
    rows = x.permute(order).contiguous();
  }
  const int threads = inner >= 1024 ? 512 : (inner >= 128 ? 128 : 32);
  const int blocks = int(std::min<int64_t>(n_out, int64_t(1) << 30));
  sum_rows_kernel<<<blocks, threads, 0, cuda::stream()>>>(rows.data(), out.data(), n_out, inner);
  TERNARY_CUDA_CHECK_LAUNCH("sum_rows_kernel");
  return out;
}

}  // namespace ternary::backend
