// CPU rotary-embedding kernel. The op (ops/rope.hpp) documents the convention; here:
//   - RopeTable: cos/sin of pos * base^(-2i/Dh) for positions [0, n) and i in [0, Dh/2),
//     computed in double and rounded once to T. Tables are cached per thread, keyed by
//     (Dh, base), and grown (never shrunk) to the largest position asked for, so a training
//     step reuses one table and a decode loop with a growing position_offset rebuilds it only
//     when it doubles. A table is immutable once built; backward closures keep theirs alive.
//   - rope_rotate: y = R(pos) x on rows of Dh elements (R^T for the backward).
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

template <class T>
struct RopeTable {
  int64_t positions = 0;  // rows: pos in [0, positions)
  int64_t half = 0;       // Dh / 2 columns
  double base = 10000.0;
  std::vector<T> cos, sin;  // [positions, half], row-major
  const T* cos_row(int64_t pos) const { return cos.data() + pos * half; }
  const T* sin_row(int64_t pos) const { return sin.data() + pos * half; }
};

// The table for head size 2*half and `base` covering positions [0, positions).
template <class T>
std::shared_ptr<const RopeTable<T>> rope_table(cpu, int64_t positions, int64_t half, double base) {
  thread_local std::map<std::pair<int64_t, double>, std::shared_ptr<const RopeTable<T>>> cache;
  auto& slot = cache[{half, base}];
  if (slot && slot->positions >= positions) return slot;
  const int64_t n = std::max<int64_t>(positions, slot ? 2 * slot->positions : 0);
  auto t = std::make_shared<RopeTable<T>>();
  t->positions = n;
  t->half = half;
  t->base = base;
  t->cos.resize(static_cast<size_t>(n * half));
  t->sin.resize(static_cast<size_t>(n * half));
  std::vector<double> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) freq[i] = std::pow(base, -2.0 * double(i) / double(2 * half));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(p) * freq[i];
      t->cos[p * half + i] = T(std::cos(a));
      t->sin[p * half + i] = T(std::sin(a));
    }
  if (cache.size() > 16) cache.clear();  // bound memory if many (Dh, base) pairs are used
  slot = t;
  return t;
}

// out = rotate(x) for x contiguous [rows, 2*half] where row r sits at position
// position_offset + r % seq_len. With inverse, the transpose rotation (sin negated):
//   forward:  y1 = x1 c + x2 s     y2 = x2 c - x1 s
//   inverse:  y1 = x1 c - x2 s     y2 = x2 c + x1 s
// out may alias x exactly (each element is read before its slot is written).
template <class T>
void rope_rotate(cpu, const T* x, T* out, int64_t rows, int64_t seq_len, int64_t position_offset,
                 const RopeTable<T>& table, bool inverse) {
  const int64_t half = table.half, dh = 2 * half;
#pragma omp parallel for schedule(static) if (rows * dh >= cpu_detail::kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* c = table.cos_row(position_offset + r % seq_len);
    const T* s = table.sin_row(position_offset + r % seq_len);
    const T* x1 = x + r * dh;
    const T* x2 = x1 + half;
    T* y1 = out + r * dh;
    T* y2 = y1 + half;
    int64_t i = 0;
    if constexpr (cpu_detail::Vectorizable<T>) {
      using V = xsimd::batch<T>;
      constexpr int64_t W = V::size;
      for (; i + W <= half; i += W) {
        const V a = V::load_unaligned(x1 + i), b = V::load_unaligned(x2 + i);
        const V cv = V::load_unaligned(c + i);
        const V sv = inverse ? -V::load_unaligned(s + i) : V::load_unaligned(s + i);
        xsimd::fma(a, cv, b * sv).store_unaligned(y1 + i);
        xsimd::fnma(a, sv, b * cv).store_unaligned(y2 + i);  // b c - a s
      }
    }
    for (; i < half; ++i) {
      const T a = x1[i], b = x2[i], cv = c[i], sv = inverse ? -s[i] : s[i];
      y1[i] = a * cv + b * sv;
      y2[i] = b * cv - a * sv;
    }
  }
}

}  // namespace ternary::backend
