// Causal self-attention with grouped-query heads (GQA), as one fused op.
//
//   q [B, Hq, T, Dh], k and v [B, Hkv, T, Dh], Hq a multiple of Hkv; query head h attends
//   with kv head h / (Hq / Hkv) (query heads are grouped consecutively).
//   S = scale q k^T (scale defaults to 1/sqrt(Dh)),  S_ij = -inf for j > i (causal)
//   P = softmax(S) row-wise,  out = P v                           -> [B, Hq, T, Dh]
//
// Backward (P is recomputed from the saved row logsumexp, never stored):
//   dv = P^T dout       dP = dout v^T       dS = P * (dP - rowsum(dout * out))
//   dq = scale dS k     dk = scale dS^T q   (dk, dv summed over the query heads of a group)
//
// Memory beyond inputs and output: the logsumexp, O(B Hq T); on the GPU with tensor cores also
// q, k, v in bf16 (packed by the forward, reused by the backward: 2 bytes per element).
// Kernel: backend/cpu/attention.hpp.
// Layouts: on the GPU the output is token-major memory [B, T, Hq, Dh] seen as [B, Hq, T, Dh],
// so merging the heads back (permute to [B, T, Hq, Dh], reshape to [B, T, Hq Dh]) is free;
// the gradients of q, k, v are written in those inputs' own layout when it is such a view.
// The CPU kernels write contiguous [B, H, T, Dh] tensors.
// causal_attention_reference is the same function built from plain differentiable ops
// (materialising the T x T scores); tests check the fused op against it.
// Tests: tests/test_attention.cpp.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "ternary/autograd/var.hpp"
#include "ternary/backend/cpu/attention.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/view.hpp"

namespace ternary {

namespace detail {
// Checks q/k/v shapes; returns the scale to use.
inline double check_attention(const char* op, const Shape& q, const Shape& k, const Shape& v,
                              std::optional<double> scale) {
  if (q.size() != 4 || k.size() != 4 || v.size() != 4)
    throw ShapeError(cat(op, ": q, k, v must be [B, H, T, Dh], got q ", q, ", k ", k, ", v ", v));
  if (!(k == v)) throw ShapeError(cat(op, ": k ", k, " and v ", v, " must have the same shape"));
  if (q[0] != k[0] || q[2] != k[2] || q[3] != k[3])
    throw ShapeError(cat(op, ": q ", q, " and k/v ", k, " must agree in B, T and Dh"));
  if (k[1] == 0 || q[1] % k[1] != 0)
    throw ShapeError(cat(op, ": the number of query heads Hq = ", q[1],
                         " must be a multiple of the number of kv heads Hkv = ", k[1], " (q ", q,
                         ", k ", k, ")"));
  const double s = scale ? *scale : 1.0 / std::sqrt(double(std::max<int64_t>(q[3], 1)));
  if (!std::isfinite(s)) throw Error(cat(op, ": scale must be finite, got ", s));
  return s;
}

// The output tensor of the op: on the GPU a [B, H, T, Dh] view of token-major memory.
template <class T, class B>
Tensor<T, B> attention_output(const Shape& s) {
  if constexpr (B::on_host)
    return Tensor<T, B>::empty(s);
  else
    return Tensor<T, B>::empty(Shape{s[0], s[2], s[1], s[3]}).permute({0, 2, 1, 3});
}
// A gradient for x (of element type E: x's own by default): on the GPU in x's layout when x is
// a [B, H, T, Dh] view of token-major memory (the GPT's heads), so the gradient flows back
// through the head split without a copy.
template <class E = void, class T, class B>
auto attention_grad_like(const Tensor<T, B>& x) {
  using U = std::conditional_t<std::is_void_v<E>, T, E>;
  if constexpr (!B::on_host) {
    const auto tm = x.permute({0, 2, 1, 3});
    if (tm.is_contiguous()) return attention_output<U, B>(x.shape());
  }
  return Tensor<U, B>::empty(x.shape());
}
}  // namespace detail

// ---- tensor level (no gradient) -------------------------------------------------------------
template <class T, class B>
Tensor<T, B> causal_attention(const Tensor<T, B>& q, const Tensor<T, B>& k, const Tensor<T, B>& v,
                              std::optional<double> scale = std::nullopt) {
  const double s =
      detail::check_attention("causal_attention", q.shape(), k.shape(), v.shape(), scale);
  auto out = detail::attention_output<T, B>(q.shape());
  backend::causal_attention_forward(B{}, q, k, v, T(s), out, static_cast<Tensor<T, B>*>(nullptr));
  return out;
}

// ---- differentiable, fused ------------------------------------------------------------------
template <class T, class B>
Var<T, B> causal_attention(const Var<T, B>& q, const Var<T, B>& k, const Var<T, B>& v,
                           std::optional<double> scale = std::nullopt) {
  const T s =
      T(detail::check_attention("causal_attention", q.shape(), k.shape(), v.shape(), scale));
  auto out = detail::attention_output<T, B>(q.shape());
  const bool needs =
      grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  Tensor<T, B> lse;
  Tensor<bf16, B> saved;  // the backend's operands for the backward, if it keeps any
  if (needs) lse = Tensor<T, B>::empty(Shape{q.size(0), q.size(1), q.size(2)});
  backend::causal_attention_forward(B{}, q.value(), k.value(), v.value(), s, out,
                                    needs ? &lse : nullptr, needs ? &saved : nullptr);
  return Var<T, B>::record(
      "causal_attention", out, {q, k, v}, [q, k, v, out, lse, saved, s](const Tensor<T, B>& g) {
        auto dq = detail::attention_grad_like(q.value());
        auto dk = detail::attention_grad_like(k.value());
        auto dv = detail::attention_grad_like(v.value());
        backend::causal_attention_backward(B{}, q.value(), k.value(), v.value(), out, lse, g, s, dq,
                                           dk, dv, &saved);
        if (q.requires_grad()) q.accumulate_grad(dq);
        if (k.requires_grad()) k.accumulate_grad(dk);
        if (v.requires_grad()) v.accumulate_grad(dv);
      });
}

// ---- reference (tests): the same function from plain differentiable ops ----------------------
// kv heads are repeated to Hq by expand + reshape, the causal mask is added as -inf, and the
// softmax is exp(S - rowmax) / rowsum with the row max held constant (it cancels exactly).
template <class T, class B>
Var<T, B> causal_attention_reference(const Var<T, B>& q, const Var<T, B>& k, const Var<T, B>& v,
                                     std::optional<double> scale = std::nullopt) {
  const double s =
      detail::check_attention("causal_attention_reference", q.shape(), k.shape(), v.shape(), scale);
  const int64_t Bn = q.size(0), Hq = q.size(1), Tn = q.size(2), D = q.size(3), Hkv = k.size(1);
  auto repeat_heads = [&](const Var<T, B>& x) {
    return reshape(expand(unsqueeze(x, 2), Shape{Bn, Hkv, Hq / Hkv, Tn, D}), Shape{Bn, Hq, Tn, D});
  };
  auto kr = repeat_heads(k), vr = repeat_heads(v);
  auto mask = Tensor<T, B>::zeros(Shape{Tn, Tn});
  for (int64_t i = 0; i < Tn; ++i)
    for (int64_t j = i + 1; j < Tn; ++j) mask(i, j) = -std::numeric_limits<T>::infinity();
  auto scores = matmul(q, transpose(kr, -1, -2)) * s + Var<T, B>::constant(mask);
  auto row_max = Var<T, B>::constant(max(scores.value(), {-1}, true));
  auto e = exp(scores - row_max);
  auto p = e / sum(e, {-1}, true);
  return matmul(p, vr);
}

}  // namespace ternary
