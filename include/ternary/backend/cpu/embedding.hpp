// CPU embedding kernels: a row gather (forward) and its scatter-add (backward). Ids are
// validated by the op layer (ops/embedding.hpp) before a kernel runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

// out[i, :] = table[ids[i], :]   (table contiguous [V, D], ids contiguous [N], out [N, D])
template <class T>
void embedding_forward(cpu, const Tensor<T, cpu>& table, const Tensor<int32_t, cpu>& ids,
                       const Tensor<T, cpu>& out) {
  const int64_t N = ids.numel(), D = table.size(1);
  const T* tab = table.data();
  const int32_t* id = ids.data();
  T* o = out.data();
#pragma omp parallel for schedule(static) if (N > 1 && N * D >= cpu_detail::kParallelThreshold)
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(o + i * D, tab + int64_t(id[i]) * D, size_t(D) * sizeof(T));
}

// dtable[ids[i], :] += g[i, :]   (dtable contiguous [V, D], g contiguous [N, D])
// Repeated ids make rows collide, so threads split the D columns instead of the ids: each
// thread owns a column block of every row, and the sum order per element is the id order.
template <class T>
void embedding_backward(cpu, const Tensor<int32_t, cpu>& ids, const Tensor<T, cpu>& g,
                        const Tensor<T, cpu>& dtable) {
  const int64_t N = ids.numel(), D = dtable.size(1);
  constexpr int64_t kBlock = 64;  // columns per task: a cache line or four per row
  const int32_t* id = ids.data();
  const T* gs = g.data();
  T* dt = dtable.data();
  const int64_t blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (blocks > 1 && N * D >= cpu_detail::kParallelThreshold)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlock, c1 = std::min(D, c0 + kBlock);
    for (int64_t i = 0; i < N; ++i) {
      T* dst = dt + int64_t(id[i]) * D;
      const T* src = gs + i * D;
      for (int64_t j = c0; j < c1; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace ternary::backend
