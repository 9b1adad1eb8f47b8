// Helpers for the CUDA tests: compare a device tensor with a CPU reference.
#pragma once

#include <cmath>
#include <vector>

#include "ternary/backend/cuda/cuda.hpp"

namespace ternary::test {

// ||a - b|| / ||b|| (b the CPU reference); 0 when both are zero. NaN never passes (NaN > x
// is false, so callers check `rel_err(...) < tol`).
template <class T>
double rel_err(const Tensor<T, cuda>& a, const Tensor<T, cpu>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = double(va[i]) - double(vb[i]);
    num += d * d;
    den += double(vb[i]) * double(vb[i]);
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

}  // namespace ternary::test
