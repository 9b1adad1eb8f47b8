// Orthonormal fast Walsh-Hadamard transform, the rotation QuEST quantizes in.
//   H_1 = [1],  H_2n = [[H_n, H_n], [H_n, -H_n]] / sqrt(2)
// H is orthonormal and symmetric, so it is its own inverse: fwht(fwht(x)) = x (up to
// rounding). O(n log n) butterflies instead of an n x n matrix product.
#pragma once

#include <cmath>
#include <cstdint>

#include "ternary/core/error.hpp"

namespace ternary::quant {

inline bool is_power_of_two(int64_t n) {
  return n > 0 && (n & (n - 1)) == 0;
}

// In place on n values; n must be a power of two.
template <class T>
void fwht(T* x, int64_t n) {
  if (!is_power_of_two(n))
    throw ShapeError(detail::cat("fwht: length ", n, " is not a power of two"));
  for (int64_t len = 1; len < n; len <<= 1)
    for (int64_t i = 0; i < n; i += len << 1)
      for (int64_t j = i; j < i + len; ++j) {
        const T a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
  const T norm = T(1) / std::sqrt(T(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= norm;
}

// Transforms each of the n / block consecutive blocks of `block` values.
template <class T>
void fwht_blocks(T* x, int64_t n, int64_t block) {
  if (!is_power_of_two(block) || n % block != 0)
    throw ShapeError(detail::cat("fwht_blocks: block ", block,
                                 " must be a power of two dividing the length ", n));
  for (int64_t i = 0; i < n; i += block) fwht(x + i, block);
}

}  // namespace ternary::quant
