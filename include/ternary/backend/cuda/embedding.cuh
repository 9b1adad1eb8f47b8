// CUDA embedding kernels (the CPU's contract, backend/cpu/embedding.hpp): a row gather and its
// scatter-add.
//   forward:  out[i, :] = table[ids[i], :]          one thread per output element
//   backward: dtable[ids[i], :] += g[i, :]          atomicAdd (repeated ids collide), so the
//             order of the additions, and the last bits of a repeated row's sum, may vary
// The forward checks the ids itself (no host copy, no wait): an id outside [0, V) gives a zero
// row and is reported (index_fault.cuh), and the host throws IndexError at its next
// synchronisation; the backward skips such ids.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cstdint>

#include "ternary/backend/cpu/embedding.hpp"
#include "ternary/backend/cuda/elementwise.cuh"
#include "ternary/backend/cuda/index_fault.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
__global__ void embedding_forward_kernel(const T* __restrict__ table,
                                         const int32_t* __restrict__ ids, T* __restrict__ out,
                                         int64_t N, int64_t D, int64_t V, IndexFaultSlot fault) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < N * D;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / D, j = k % D;
    const int32_t id = ids[i];
    if (id >= 0 && id < V) {
      out[k] = table[int64_t(id) * D + j];
    } else {
      out[k] = T(0);
      if (j == 0) report_index_fault(fault, i, id);
    }
  }
}

template <class T>
__global__ void embedding_backward_kernel(const int32_t* __restrict__ ids, const T* __restrict__ g,
                                          T* __restrict__ dtable, int64_t N, int64_t D, int64_t V) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < N * D;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / D, j = k % D;
    const int32_t id = ids[i];
    if (id >= 0 && id < V) atomicAdd(dtable + int64_t(id) * D + j, g[k]);
  }
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
void embedding_forward(cuda, const Tensor<T, cuda>& table, const Tensor<int32_t, cuda>& ids,
                       const Tensor<T, cuda>& out) {
  using namespace cuda_detail;
  const int64_t N = ids.numel(), D = table.size(1);
  if (!table.is_contiguous() || !ids.is_contiguous() || !out.is_contiguous() ||
      out.numel() != N * D)
    throw ShapeError(detail::cat("embedding_forward(cuda): table ", table.shape(), ", ids ",
                                 ids.shape(), ", out ", out.shape(), " (all contiguous)"));
  if (N * D == 0) return;
  const int64_t V = table.size(0);
  const auto fault =
      index_fault_slot("embedding", "id", ids.shape(), detail::cat("a table of ", V, " rows"));
  const Launch l = launch_for(N * D);
  embedding_forward_kernel<<<l.blocks, l.threads, 0, cuda::stream()>>>(table.data(), ids.data(),
                                                                       out.data(), N, D, V, fault);
  TERNARY_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

template <class T>
void embedding_backward(cuda, const Tensor<int32_t, cuda>& ids, const Tensor<T, cuda>& g,
                        const Tensor<T, cuda>& dtable) {
  using namespace cuda_detail;
  const int64_t N = ids.numel(), D = dtable.size(1);
  if (!g.is_contiguous() || !ids.is_contiguous() || !dtable.is_contiguous() || g.numel() != N * D)
    throw ShapeError(detail::cat("embedding_backward(cuda): ids ", ids.shape(), ", g ", g.shape(),
                                 ", dtable ", dtable.shape(), " (all contiguous)"));
  if (N * D == 0) return;
  const Launch l = launch_for(N * D);
  embedding_backward_kernel<<<l.blocks, l.threads, 0, cuda::stream()>>>(
      ids.data(), g.data(), dtable.data(), N, D, dtable.size(0));
  TERNARY_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace ternary::backend
