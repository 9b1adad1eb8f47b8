// The GPT's attention core as one op:
//
//   rope_attention(q, q_gain, k, v, eps, base)
//     = causal_attention(head_norm_rope(q, q_gain, eps, base), head_norm_rope(k, eps, base), v)
//
// (q [B, Hq, T, Dh] and k, v [B, Hkv, T, Dh]: the projections split into heads, q and k before
// their norm and rotation; q_gain [Hq].) Elsewhere than the tensor-core attention this is
// exactly that composition, values and tape alike. On CUDA with the tensor-core attention
// (cuda::set_bf16 or set_tf32) and heads of 64 or 128, one node: the head_norm_rope kernels
// write q and k rounded to bf16 straight into the attention's packed operand buffer (where the
// attention would have rounded them anyway), so the fp32 roped q and k never reach memory and
// are not packed by passes of their own; v is packed as before. The backward runs the
// attention's backward from that buffer, then head_norm_rope's backward for q and for k. The
// values are the composition's on the same backend, bit for bit (the same kernels' arithmetic,
// rounded in the same place). With bf16 products (cuda::set_bf16) the gradients of q, k and v
// are written in bf16 by the kernels that make them (head_norm_rope's backward, the attention's
// dk/dv kernel) and handed on as gradients born in bf16 (Var::accumulate_grad_bf16): the q, k,
// v projections' backward rounds them to bf16 anyway, so their fp32 copies and the rounding
// passes are gone, and the projections' gradients are bit for bit the same. Also under bf16
// products the kernel stores the output in bf16 beside fp32 (Var::value_bf16: the output
// projection's operand), and a gradient born in bf16 (that projection writes it so) is packed
// as it is, with Di from the bf16 output and gradient. With AttentionOutput::bf16_only (the
// GPT, whose full-precision output projection reads only that copy) no fp32 output is stored.
// Tests: tests/cuda/test_cuda_ops.cu.
#pragma once

#include <optional>

#include "ternary/ops/attention.hpp"
#include "ternary/ops/head_norm_rope.hpp"

namespace ternary {

// What the one-node path keeps of its output under bf16 products (cuda::set_bf16), where the
// kernel writes it in bf16 for the readers whose products round it so: also the fp32 value (any
// reader), or the bf16 copy alone (Var::record_bf16_only: ~0.13 GB of stores less per GPT layer
// of 64 x 1024 tokens; a reader in fp32 then sees the bf16-rounded values widened). Elsewhere
// the output is fp32 either way.
enum class AttentionOutput { fp32_and_bf16, bf16_only };

namespace detail {

// The one-node path; nullopt where it does not apply (the caller composes).
template <class T, class B>
std::optional<Var<T, B>> rope_attention_packed(const Var<T, B>& q, const Var<T, B>& q_gain,
                                               const Var<T, B>& k, const Var<T, B>& v, double eps,
                                               double base, T scale, AttentionOutput output) {
  const int64_t Bn = q.size(0), Hq = q.size(1), Tn = q.size(2), Dh = q.size(3), Hkv = k.size(1);
  if (!(Dh == 64 || Dh == 128)) return std::nullopt;  // head_norm_rope's vector kernels
  // (the device-only backend functions by argument-dependent lookup on the tag)
  const Tensor<bf16, B> packed = attention_packed_buffer(B{}, Bn, Hq, Hkv, Tn, Dh);
  if (!packed.defined()) return std::nullopt;
  const auto q_rows = with_unit_rows(q.value()), k_rows = with_unit_rows(k.value());
  const auto gain_c = q_gain.value().contiguous();
  auto table = backend::rope_table<T>(B{}, Tn, Dh / 2, base);
  bf16* qp = packed.data();
  bf16* kp = qp + Bn * Hq * Tn * Dh;
  const backend::HeadRows ql{Bn, Hq, Tn, Dh, Hq * Tn * Dh, Tn * Dh, Dh};
  const backend::HeadRows kl{Bn, Hkv, Tn, Dh, Hkv * Tn * Dh, Tn * Dh, Dh};
  if (!head_norm_rope_forward_bf16(B{}, q_rows.data(), head_rows_of(q_rows), gain_c.data(), qp, ql,
                                   *table, eps) ||
      !head_norm_rope_forward_bf16(B{}, k_rows.data(), head_rows_of(k_rows),
                                   static_cast<const T*>(nullptr), kp, kl, *table, eps))
    return std::nullopt;
  // With bf16 products the kernel also writes out in bf16 (laid out as out): the output
  // projection's operand (Var::value_bf16), so no pass rounds it, and the backward's Di reads it.
  // AttentionOutput::bf16_only: that copy alone (Var::record_bf16_only).
  const bool grads_bf16 = backend::bf16_products(B{});
  const bool bf16_only = grads_bf16 && output == AttentionOutput::bf16_only;
  auto out = bf16_only ? Tensor<T, B>() : attention_output<T, B>(q.shape());
  auto lse = Tensor<T, B>::empty(Shape{Bn, Hq, Tn});
  auto out16 = grads_bf16 ? attention_output<bf16, B>(q.shape()) : Tensor<bf16, B>();
  causal_attention_forward_prepacked(B{}, packed, v.value(), Hq, scale, out, lse,
                                     grads_bf16 ? &out16 : nullptr);
  auto rule = [q, q_gain, k, v, packed, out, out16, lse, q_rows, k_rows, gain_c, table, eps, scale,
               grads_bf16](const Tensor<T, B>& g, const Tensor<bf16, B>& g_bf16) {
    // gradients of the roped q and k, and of v (bf16 where the products round them so);
    // dout as it came: fp32, or born in bf16 (the output projection's GEMM wrote it so)
    auto dq = attention_grad_like(q.value());
    auto dk = attention_grad_like(k.value());
    auto backward = [&](auto& dv) {
      if (!g.defined() && g_bf16.defined() && out16.defined())
        causal_attention_backward_prepacked(B{}, packed, out16, lse, g_bf16, scale, dq, dk, dv);
      else if (!out.defined())  // (the output in bf16 only; g in T, unit-stride heads)
        causal_attention_backward_prepacked(B{}, packed, out16, lse, g.contiguous(), scale, dq, dk,
                                            dv);
      else
        causal_attention_backward_prepacked(
            B{}, packed, out, lse, g.defined() ? g : widen_bf16(B{}, g_bf16), scale, dq, dk, dv);
    };
    if (grads_bf16) {
      auto dv16 = attention_grad_like<bf16>(v.value());
      backward(dv16);
      if (v.requires_grad()) v.accumulate_grad_bf16(dv16);
    } else {
      auto dv = attention_grad_like(v.value());
      backward(dv);
      if (v.requires_grad()) v.accumulate_grad(dv);
    }
    head_norm_rope_backward_var(q, q_gain, q_rows, gain_c, table, eps, dq, grads_bf16);
    head_norm_rope_backward_var(k, Var<T, B>(), k_rows, Tensor<T, B>(), table, eps, dk, grads_bf16);
  };
  if (bf16_only)
    return Var<T, B>::record_bf16_only("rope_attention", out16, {q, q_gain, k, v}, rule);
  auto y = Var<T, B>::record("rope_attention", out, {q, q_gain, k, v}, rule);
  if (out16.defined()) y.set_value_bf16(out16);
  return y;
}

}  // namespace detail

template <class T, class B>
Var<T, B> rope_attention(const Var<T, B>& q, const Var<T, B>& q_gain, const Var<T, B>& k,
                         const Var<T, B>& v, double eps = 1e-6, double base = 10000.0,
                         std::optional<double> scale = std::nullopt,
                         AttentionOutput output = AttentionOutput::fp32_and_bf16) {
  const double s =
      detail::check_attention("rope_attention", q.shape(), k.shape(), v.shape(), scale);
  detail::check_head_norm_rope(q.value(), &q_gain.value(), eps, base);
  detail::check_head_norm_rope(k.value(), static_cast<const Tensor<T, B>*>(nullptr), eps, base);
  if constexpr (!B::on_host && std::is_same_v<T, float>) {
    if (auto y = detail::rope_attention_packed(q, q_gain, k, v, eps, base, T(s), output)) return *y;
  }
  return causal_attention(head_norm_rope(q, q_gain, eps, base), head_norm_rope(k, eps, base), v,
                          scale);
}

}  // namespace ternary
