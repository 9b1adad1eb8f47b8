// 8-bit activations, per token (BitNet b1.58): each row x of the last axis is scaled so
// its largest magnitude maps to 127, rounded, clamped to [-128, 127] and scaled back:
//   s = 127 / max|x|,   x_q = clamp(round(x * s), -128, 127) / s
// The gradient passes straight through. A row of zeros stays zero (no division by zero).
// lambda blends as for weights: x + lambda * stop_gradient(x_q - x).
#pragma once

#include <cmath>
#include <vector>

#include "ternary/autograd/var.hpp"
#include "ternary/quant/ternary.hpp"

namespace ternary::quant {

// Quantizes rows of the last axis: int8 values and the per-row scale s (x ~= q / s).
template <class T, class B>
void quantize_rows_int8(const Tensor<T, B>& x, std::vector<int8_t>& q, std::vector<float>& scale) {
  const Tensor<T, B> xc = x.contiguous();
  const int64_t D = x.dim() ? x.size(-1) : 1, rows = D ? xc.numel() / D : 0;
  q.resize(xc.numel());
  scale.resize(rows);
  const T* p = xc.data();
#pragma omp parallel for schedule(static) if (xc.numel() >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * D;
    float m = 0;
    for (int64_t j = 0; j < D; ++j) m = std::max(m, float(std::abs(row[j])));
    const float s = m > 0 ? 127.0f / m : 1.0f;
    scale[r] = s;
    for (int64_t j = 0; j < D; ++j) {
      const float v = std::nearbyint(float(row[j]) * s);
      q[r * D + j] = int8_t(v > 127.f ? 127.f : (v < -128.f ? -128.f : v));
    }
  }
}

template <class T, class B>
Tensor<T, B> fake_quantize_int8(const Tensor<T, B>& x) {
  std::vector<int8_t> q;
  std::vector<float> s;
  quantize_rows_int8(x, q, s);
  auto out = Tensor<T, B>::empty(x.shape());
  const int64_t D = x.dim() ? x.size(-1) : 1;
  for (size_t i = 0; i < q.size(); ++i) out.data()[i] = T(float(q[i]) / s[i / D]);
  return out;
}

// Differentiable per-token int8 fake quantization with a straight-through gradient.
template <class T, class B>
Var<T, B> quantize_activations(const Var<T, B>& x, double lambda = 1.0) {
  if (lambda <= 0) return x;
  return Var<T, B>::record("act_quant_int8", detail::blend(x.value(), fake_quantize_int8(x.value()), lambda), {x},
                           [x](const Tensor<T, B>& g) { x.accumulate_grad(g); });
}

}  // namespace ternary::quant
