// CUDA rotary embeddings (the convention is in ops/rope.hpp; the CPU kernel in
// backend/cpu/rope.hpp). The cos/sin table is the CPU's (computed in double on the host,
// rounded once to T, cached per thread and grown by doubling), uploaded once per table: the
// device copies live in a per-thread cache keyed by the host table, which they keep alive, so
// a key is never reused for another table. rope_rotate then runs one thread per pair.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <map>
#include <memory>

#include "ternary/backend/cpu/rope.hpp"
#include "ternary/backend/cuda/elementwise.cuh"

namespace ternary::backend::cuda_detail {

template <class T>
struct DeviceRopeTable {
  std::shared_ptr<const RopeTable<T>> host;
  Tensor<T, cuda> cos, sin;
};

template <class T>
std::map<const RopeTable<T>*, DeviceRopeTable<T>>& rope_device_cache() {
  thread_local std::map<const RopeTable<T>*, DeviceRopeTable<T>> cache;
  return cache;
}

template <class T>
DeviceRopeTable<T> upload_rope_table(const std::shared_ptr<const RopeTable<T>>& t) {
  const Shape s{t->positions, t->half};
  return {t, Tensor<T, cuda>::from(s, t->cos), Tensor<T, cuda>::from(s, t->sin)};
}

// The device copy of a host table: from this thread's cache, or uploaded for this call if the
// cache no longer holds it (cleared).
template <class T>
DeviceRopeTable<T> device_rope_table(const RopeTable<T>& table) {
  auto& cache = rope_device_cache<T>();
  if (auto it = cache.find(&table); it != cache.end()) return it->second;
  const Shape s{table.positions, table.half};
  DeviceRopeTable<T> dev;
  dev.cos = Tensor<T, cuda>::from(s, table.cos);
  dev.sin = Tensor<T, cuda>::from(s, table.sin);
  return dev;
}

template <class T>
__global__ void rope_rotate_kernel(const T* x, T* out, int64_t rows, int64_t half, int64_t seq_len,
                                   int64_t position_offset, const T* __restrict__ cos_t,
                                   const T* __restrict__ sin_t, bool inverse) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < rows * half;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / half, i = k % half;
    const int64_t pos = position_offset + r % seq_len;
    const T c = cos_t[pos * half + i], s = inverse ? -sin_t[pos * half + i] : sin_t[pos * half + i];
    const T a = x[r * 2 * half + i], b = x[r * 2 * half + half + i];
    out[r * 2 * half + i] = a * c + b * s;
    out[r * 2 * half + half + i] = b * c - a * s;
  }
}

}  // namespace ternary::backend::cuda_detail

namespace ternary::backend {

template <class T>
std::shared_ptr<const RopeTable<T>> rope_table(cuda, int64_t positions, int64_t half, double base) {
  auto t = rope_table<T>(cpu{}, positions, half, base);
  auto& cache = cuda_detail::rope_device_cache<T>();
  if (!cache.count(t.get())) {
    if (cache.size() > 16) cache.clear();  // bound memory, as the host cache does
    cache.emplace(t.get(), cuda_detail::upload_rope_table(t));
  }
  return t;
}

// out = rotate(x) for x contiguous [rows, 2*half] on the device (see the CPU kernel); out may
// alias x exactly (each thread reads its pair before writing it).
template <class T>
void rope_rotate(cuda, const T* x, T* out, int64_t rows, int64_t seq_len, int64_t position_offset,
                 const RopeTable<T>& table, bool inverse) {
  using namespace cuda_detail;
  if (position_offset + seq_len > table.positions)
    throw IndexError(detail::cat("rope_rotate(cuda): positions up to ", position_offset + seq_len,
                                 " for a table of ", table.positions));
  const DeviceRopeTable<T> dev = device_rope_table(table);
  const int64_t n = rows * table.half;
  if (n == 0) return;
  const Launch l = launch_for(n);
  rope_rotate_kernel<<<l.blocks, l.threads, 0, cuda::stream()>>>(
      x, out, rows, table.half, seq_len, position_offset, dev.cos.data(), dev.sin.data(), inverse);
  TERNARY_CUDA_CHECK_LAUNCH("rope_rotate_kernel");
}

}  // namespace ternary::backend
