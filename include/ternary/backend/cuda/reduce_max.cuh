// CUDA max over a set of axes and the scatter of its backward (the CPU's contract,
// backend/cpu/reduce.hpp and ops/reduce.hpp): the reduced axes are permuted last (one strided
// copy unless they already are), then one block per output row finds the value and the flat
// index of the FIRST maximum, as the CPU's sequential scan does (a NaN at index 0 wins, other
// NaNs are skipped). The argmax indices come back to the host (the op keeps them there, one
// synchronous copy); the backward uploads them and scatters the output gradient on the device.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cstdint>
#include <vector>

#include "ternary/backend/cpu/reduce.hpp"
#include "ternary/backend/cuda/reduce.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__device__ bool max_better(T v, int64_t i, T bv, int64_t bi) {
  return v > bv || (v == bv && i < bi);
}

template <class T>
__global__ void max_rows_kernel(const T* __restrict__ x, T* __restrict__ out,
                                int64_t* __restrict__ arg, int64_t rows, int64_t inner) {
  __shared__ T sv[32];
  __shared__ int64_t si[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * inner;
    T bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t j = threadIdx.x; j < inner; j += blockDim.x)
      if (max_better(row[j], j, bv, bi)) {
        bv = row[j];
        bi = j;
      }
    for (int o = 16; o > 0; o >>= 1) {
      const T ov = __shfl_down_sync(0xffffffffu, bv, o);
      const int64_t oi = __shfl_down_sync(0xffffffffu, bi, o);
      if (max_better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
      sv[warp] = bv;
      si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < int(blockDim.x / 32); ++w)
        if (max_better(sv[w], si[w], bv, bi)) {
          bv = sv[w];
          bi = si[w];
        }
      if (isnan(row[0]) || bi == INT64_MAX) {  // the CPU's scan keeps a leading NaN
        bv = row[0];
        bi = 0;
      }
      out[r] = bv;
      arg[r] = bi;
    }
    __syncthreads();
  }
}

template <class T>
__global__ void max_scatter_kernel(const T* __restrict__ g, const int64_t* __restrict__ arg,
                                   T* __restrict__ dx, int64_t rows, int64_t inner) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x)
    dx[r * inner + arg[r]] = g[r];
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
Tensor<T, cuda> reduce_max(cuda, const Tensor<T, cuda>& x, const std::vector<int>& axes,
                           std::vector<int64_t>* argmax) {
  using namespace cuda_detail;
  const cpu_detail::ReducePlan p = cpu_detail::plan_reduction(x.shape(), axes);
  auto out = Tensor<T, cuda>::empty(p.out_keepdim);
  const int64_t n_out = out.numel();
  const int64_t inner = n_out ? x.numel() / n_out : 0;
  if (inner == 0 && n_out > 0)
    throw ShapeError(detail::cat("max: cannot reduce over an empty axis (shape ", x.shape(), ")"));
  if (argmax) argmax->assign(size_t(n_out), 0);
  if (n_out == 0) return out;
  const Tensor<T, cuda> rows = reduced_axes_last(x, p);
  auto arg = Tensor<int64_t, cuda>::empty(Shape{n_out});
  const int threads = inner >= 1024 ? 512 : (inner >= 128 ? 128 : 32);
  const int blocks = int(std::min<int64_t>(n_out, int64_t(1) << 30));
  max_rows_kernel<<<blocks, threads, 0, cuda::stream()>>>(rows.data(), out.data(), arg.data(),
                                                          n_out, inner);
  TERNARY_CUDA_CHECK_LAUNCH("max_rows_kernel");
  if (argmax) *argmax = arg.to_vector();
  return out;
}

// dx (contiguous [rows, inner], zero) gets dx[r, argmax[r]] = g[r].
template <class T>
void max_backward_scatter(cuda, const Tensor<T, cuda>& g, const std::vector<int64_t>& argmax,
                          int64_t inner, Tensor<T, cuda>& dx) {
  using namespace cuda_detail;
  const int64_t rows = int64_t(argmax.size());
  if (!g.is_contiguous() || g.numel() != rows || !dx.is_contiguous() || dx.numel() != rows * inner)
    throw ShapeError(detail::cat("max_backward_scatter(cuda): g ", g.shape(), ", dx ", dx.shape(),
                                 " for ", rows, " rows of ", inner));
  if (rows == 0) return;
  auto arg = Tensor<int64_t, cuda>::from(Shape{rows}, argmax);
  const Launch l = launch_for(rows);
  max_scatter_kernel<<<l.blocks, l.threads, 0, cuda::stream()>>>(g.data(), arg.data(), dx.data(),
                                                                 rows, inner);
  TERNARY_CUDA_CHECK_LAUNCH("max_scatter_kernel");
}

}  // namespace ternary::backend
