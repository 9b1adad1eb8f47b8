// CUDA reduction kernels: sum over a set of axes (the CPU's reduce_sum, backend/cpu/reduce.hpp,
// with the same plan and the same keepdim output shape). Two kernels, chosen by layout:
//  - rows: the reduced axes are trailing and contiguous: one block per output element, each
//    thread sums a strided part of the row, then a warp-shuffle + shared-memory tree;
//  - columns: the reduced axes are leading (a bias gradient summed over batch and time): a
//    block covers 32 adjacent output columns (coalesced reads) with 8 lanes of rows each.
// Any other layout is permuted so the reduced axes come last and made contiguous (one
// strided copy kernel), then takes the rows path. Accumulation is in T (float or double).
// Few long outputs (a per-head gain's gradient: 8 rows of 500k; a bias over 8k rows of 512
// columns) would leave most multiprocessors idle, so those are split: blocks sum chunks of rows
// (or columns of row chunks) into partial sums, and a second pass of the same kernels adds them.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <vector>

#include "ternary/backend/cpu/reduce.hpp"  // plan_reduction (host-side shape logic only)
#include "ternary/backend/cuda/elementwise.cuh"

namespace ternary::backend::cuda_detail {

// Multiprocessors of the current device (launch_for sizes its grids as 16 blocks per SM).
inline int num_sms() {
  return launch_for(int64_t(1) << 40).blocks / 16;
}

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

// For a block (32, 8) (x = column within the block's 32, y = row lane): the sum over rows
// [r0, r1) of x[i * cols + j], j = blockIdx.x * 32 + threadIdx.x, in a fixed order; valid in the
// threads with threadIdx.y == 0 (x null: 0).
template <class T>
__device__ T block_column_sum(const T* __restrict__ x, int64_t r0, int64_t r1, int64_t cols,
                              int64_t j) {
  __shared__ T part[8][33];
  T s = T(0);
  if (j < cols && x)
    for (int64_t i = r0 + threadIdx.y; i < r1; i += 8) s += x[i * cols + j];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  T t = T(0);
  if (threadIdx.y == 0)
    for (int k = 0; k < 8; ++k) t += part[k][threadIdx.x];
  return t;
}

// out[c * cols + j] = sum over rows i of chunk c (blockIdx.y, chunk_rows each) of
// x[i * cols + j]; block (32, 8).
template <class T>
__global__ void sum_cols_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                int64_t cols, int64_t chunk_rows) {
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  const T t = block_column_sum(x, r0, r1, cols, j);
  if (threadIdx.y == 0 && j < cols) out[int64_t(blockIdx.y) * cols + j] = t;
}

// out[j] = sum_i x[i * cols + j] for contiguous [rows, cols] x, split into row chunks when
// the columns alone would give too few blocks.
template <class T>
void sum_columns(const T* x, T* out, int64_t rows, int64_t cols) {
  const int64_t col_blocks = (cols + 31) / 32;
  const int64_t want = 4 * int64_t(num_sms());
  int64_t chunks = 1;
  if (col_blocks < want && rows >= 1024)
    chunks = std::min<int64_t>({(want + col_blocks - 1) / col_blocks, rows / 256, 65535});
  if (chunks <= 1) {
    sum_cols_kernel<<<unsigned(col_blocks), dim3(32, 8), 0, cuda::stream()>>>(x, out, rows, cols,
                                                                              rows);
    TERNARY_CUDA_CHECK_LAUNCH("sum_cols_kernel");
    return;
  }
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  chunks = (rows + chunk_rows - 1) / chunk_rows;
  auto partial = Tensor<T, cuda>::empty(Shape{chunks, cols});
  sum_cols_kernel<<<dim3(unsigned(col_blocks), unsigned(chunks)), dim3(32, 8), 0, cuda::stream()>>>(
      x, partial.data(), rows, cols, chunk_rows);
  TERNARY_CUDA_CHECK_LAUNCH("sum_cols_kernel");
  sum_cols_kernel<<<unsigned(col_blocks), dim3(32, 8), 0, cuda::stream()>>>(partial.data(), out,
                                                                            chunks, cols, chunks);
  TERNARY_CUDA_CHECK_LAUNCH("sum_cols_kernel");
}

// Several column sums of one shape in one launch (a norm's gain gradients and mix weights): job
// k writes out[j] = prior[j] + sum_i x[i * cols + j] (x null: no rows, the sum is 0; prior null:
// nothing so far; prior may be out itself). Each is a gradient accumulated by its kernel
// (Var::accumulate_grad_with): one small launch for all of them instead of a sum and an
// addition each.
template <class T>
struct ColumnSumJob {
  const T* x = nullptr;
  T* out = nullptr;
  const T* prior = nullptr;
};
constexpr int kMaxColumnSumJobs = 8;
template <class T>
struct ColumnSumJobs {
  ColumnSumJob<T> job[kMaxColumnSumJobs];
  int n = 0;
  void add(const T* x, T* out, const T* prior) {
    if (n == kMaxColumnSumJobs) throw Error("ColumnSumJobs: more than 8 sums in one launch");
    job[n++] = ColumnSumJob<T>{x, out, prior};
  }
};
// grid (column blocks, jobs); block (32, 8).
template <class T>
__global__ void sum_cols_into_kernel(ColumnSumJobs<T> jobs, int64_t rows, int64_t cols) {
  const ColumnSumJob<T> jb = jobs.job[blockIdx.y];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const T t = block_column_sum(jb.x, int64_t(0), rows, cols, j);
  if (threadIdx.y == 0 && j < cols) jb.out[j] = jb.prior ? jb.prior[j] + t : t;
}
template <class T>
void sum_columns_into(const ColumnSumJobs<T>& jobs, int64_t rows, int64_t cols) {
  if (jobs.n == 0 || cols == 0) return;
  sum_cols_into_kernel<<<dim3(unsigned((cols + 31) / 32), unsigned(jobs.n)), dim3(32, 8), 0,
                         cuda::stream()>>>(jobs, rows, cols);
  TERNARY_CUDA_CHECK_LAUNCH("sum_cols_into_kernel");
}

// partial[r * parts + p] = sum of x[r * inner + j] for j in [p * part, (p + 1) * part) (clipped)
template <class T>
__global__ void sum_row_parts_kernel(const T* __restrict__ x, T* __restrict__ partial,
                                     int64_t inner, int64_t part) {
  const int64_t r = blockIdx.y, lo = int64_t(blockIdx.x) * part;
  const int64_t hi = lo + part < inner ? lo + part : inner;
  const T* row = x + r * inner;
  T s = T(0);
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) s += row[j];
  s = block_sum(s);
  if (threadIdx.x == 0) partial[r * gridDim.x + blockIdx.x] = s;
}

// out[r] = sum_j x[r * inner + j] for contiguous rows; long rows are split into parts when
// there are too few rows to fill the GPU.
template <class T>
void sum_rows(const T* x, T* out, int64_t n_out, int64_t inner) {
  auto launch = [](const T* src, T* dst, int64_t rows, int64_t len) {
    const int threads = len >= 1024 ? 512 : (len >= 128 ? 128 : 32);
    const int blocks = int(std::min<int64_t>(rows, int64_t(1) << 30));
    sum_rows_kernel<<<blocks, threads, 0, cuda::stream()>>>(src, dst, rows, len);
    TERNARY_CUDA_CHECK_LAUNCH("sum_rows_kernel");
  };
  const int64_t want = 4 * int64_t(num_sms());
  const int64_t parts =
      n_out < want ? std::min<int64_t>((want + n_out - 1) / n_out, inner / 8192) : 1;
  if (parts <= 1 || n_out > 65535) return launch(x, out, n_out, inner);
  const int64_t part = (inner + parts - 1) / parts;
  auto partial = Tensor<T, cuda>::empty(Shape{n_out, parts});
  sum_row_parts_kernel<<<dim3(unsigned(parts), unsigned(n_out)), 512, 0, cuda::stream()>>>(
      x, partial.data(), inner, part);
  TERNARY_CUDA_CHECK_LAUNCH("sum_row_parts_kernel");
  launch(partial.data(), out, n_out, parts);
}

// `x` as contiguous rows [kept elements, reduced elements]: the reduced axes moved last
// (a copy unless they already are, in a contiguous tensor).
template <class T>
Tensor<T, cuda> reduced_axes_last(const Tensor<T, cuda>& x, const cpu_detail::ReducePlan& p) {
  if (p.trailing && x.is_contiguous()) return x;
  std::vector<int64_t> order;
  for (int i = 0; i < x.dim(); ++i)
    if (!p.reduced[i]) order.push_back(i);
  for (int i = 0; i < x.dim(); ++i)
    if (p.reduced[i]) order.push_back(i);
  return x.permute(order).contiguous();
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
    sum_columns(x.data(), out.data(), inner, n_out);
    return out;
  }
  const Tensor<T, cuda> rows = reduced_axes_last(x, p);
  sum_rows(rows.data(), out.data(), n_out, inner);
  return out;
}

}  // namespace ternary::backend
