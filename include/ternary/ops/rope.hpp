// Rotary position embeddings (RoPE), in the "half-split" convention of the Parameter Golf /
// modded-nanogpt GPT: the head vector is cut into halves, not into interleaved pairs, so
// element i is rotated together with element i + Dh/2. For x of shape
// [..., T, Dh] (usually [B, H, T, Dh]; the second-to-last axis is the position):
//
//   x1 = x[..., :Dh/2]   x2 = x[..., Dh/2:]     pos = position_offset + t
//   freq_i = base^(-2i/Dh),  angle = pos * freq_i,  c = cos(angle), s = sin(angle)
//   y1 = x1 c + x2 s
//   y2 = -x1 s + x2 c                          y = concat(y1, y2) along the last axis
//
// i.e. each pair (x1_i, x2_i) is rotated by -angle (HF's rotate_half splits the same way but
// rotates by +angle; attention scores depend only on relative positions either way).
// Position 0 is the identity. The rotation is orthogonal, so
//   dx1 = g1 c - g2 s,   dx2 = g1 s + g2 c      (the inverse rotation applied to g).
// Angles are computed in double, then rounded to T. Kernel: backend/cpu/rope.hpp.
// Tests: tests/test_rope.cpp.
#pragma once

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/rope.hpp"

namespace ternary {

namespace detail {
template <class T, class B>
void check_rope(const Tensor<T, B>& x, double base, int64_t position_offset) {
  if (x.dim() < 2)
    throw ShapeError(
        detail::cat("rope: expects [..., T, Dh] (usually [B, H, T, Dh]), got shape ", x.shape()));
  if (x.size(-1) % 2 != 0)
    throw ShapeError(detail::cat("rope: the head size Dh = ", x.size(-1),
                                 " must be even (pairs i, i + Dh/2 are rotated); shape ",
                                 x.shape()));
  if (!(base > 0.0)) throw Error(detail::cat("rope: base must be positive, got ", base));
  if (position_offset < 0)
    throw IndexError(detail::cat("rope: position_offset must be >= 0, got ", position_offset));
}

// Applies the rotation (or its inverse) to x, returning a new contiguous tensor.
template <class T, class B>
Tensor<T, B> rope_apply(const Tensor<T, B>& x, const backend::RopeTable<T>& table,
                        int64_t position_offset, bool inverse) {
  auto xc = x.contiguous();
  auto out = Tensor<T, B>::empty(x.shape());
  const int64_t dh = x.size(-1), seq = x.size(-2);
  const int64_t rows = dh == 0 ? 0 : x.numel() / dh;
  if (rows > 0 && seq > 0)
    backend::rope_rotate(B{}, xc.data(), out.data(), rows, seq, position_offset, table, inverse);
  return out;
}
}  // namespace detail

// ---- tensor level ---------------------------------------------------------------------------
template <class T, class B>
Tensor<T, B> rope(const Tensor<T, B>& x, double base = 10000.0, int64_t position_offset = 0) {
  detail::check_rope(x, base, position_offset);
  auto table = backend::rope_table<T>(B{}, position_offset + x.size(-2), x.size(-1) / 2, base);
  return detail::rope_apply(x, *table, position_offset, false);
}

// ---- differentiable -------------------------------------------------------------------------
template <class T, class B>
Var<T, B> rope(const Var<T, B>& x, double base = 10000.0, int64_t position_offset = 0) {
  detail::check_rope(x.value(), base, position_offset);
  auto table = backend::rope_table<T>(B{}, position_offset + x.size(-2), x.size(-1) / 2, base);
  auto out = detail::rope_apply(x.value(), *table, position_offset, false);
  return Var<T, B>::record("rope", out, {x}, [x, table, position_offset](const Tensor<T, B>& g) {
    x.accumulate_grad(detail::rope_apply(g, *table, position_offset, true));
  });
}

}  // namespace ternary
