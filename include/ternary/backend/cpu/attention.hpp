// CPU fused causal attention with grouped-query heads (the op and its math: ops/attention.hpp).
//
// Forward, one task per (batch, query head), one query row i at a time:
//   s_j = scale q_i.k_j (j <= i),  m = max_j s_j,  l = sum_j exp(s_j - m)
//   o_i = sum_j exp(s_j - m) v_j / l,   lse_i = m + log l
// Only the row's scores (T values per thread) are ever held, and only lse (B*Hq*T values) is
// saved for the backward, never the T x T probabilities.
//
// Backward, flash-attention style: the probabilities are recomputed row by row from lse,
//   p_ij = exp(scale q_i.k_j - lse_i),  dp_ij = do_i.v_j,  D_i = do_i.o_i = sum_j p_ij dp_ij
//   ds_ij = p_ij (dp_ij - D_i)
//   dq_i = scale sum_j ds_ij k_j,   dk_j += scale ds_ij q_i,   dv_j += p_ij do_i
// One task per (batch, kv head) walks every query head of its group, so each task owns its dk
// and dv rows (no atomics, no per-thread copies) and the dq rows of its query heads.
//
// Operands are [B, H, T, Dh] tensors whose last axis has unit stride; the other three axes
// may have any strides (e.g. q viewed as [B, T, H, Dh].transpose(1, 2) is read in place).
//
// Two implementations of the same math: the row kernels above (the reference, and what runs
// for short or very long sequences) and, for 16 <= T <= 1024, per-head kernels that put
// every product on the packed GEMM (gemm_kernel.hpp): S = scale Q K^T, P = causal softmax(S),
// O = P V, and in the backward dV = P^T dO, dP = dO V^T, dQ = scale dS K, dK = scale dS^T Q.
// They compute the whole T x T square (twice the causal work) in a per-thread scratch of
// two T x T blocks, and are still ~2x faster: the row kernels spend their time in short dot
// products and horizontal sums (measured in bench_train_step, below in docs/benchmarks.md).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/backend/cpu/elementwise.hpp"
#include "ternary/backend/cpu/gemm_kernel.hpp"
#include "ternary/core/tensor.hpp"

namespace ternary::backend {

namespace cpu_detail {

// Rows of a [B, H, T, Dh] tensor with unit stride along Dh.
template <class T>
struct HeadRows {
  T* data;
  int64_t sb, sh, st;
  T* row(int64_t b, int64_t h, int64_t t) const { return data + b * sb + h * sh + t * st; }
};
template <class T>
HeadRows<T> head_rows(const Tensor<T, cpu>& x) {
  return {x.data(), x.strides()[0], x.strides()[1], x.strides()[2]};
}
// x itself if its last axis has unit stride (or extent <= 1), else a contiguous copy.
template <class T>
Tensor<T, cpu> unit_inner(const Tensor<T, cpu>& x) {
  return x.size(-1) <= 1 || x.strides()[x.dim() - 1] == 1 ? x : x.clone();
}

// sum_i a[i] b[i]
template <class T>
T attn_dot(const T* a, const T* b, int64_t n) {
  int64_t i = 0;
  T s = T(0);
  if constexpr (Vectorizable<T>) {
    using V = xsimd::batch<T>;
    constexpr int64_t W = V::size;
    V acc0(T(0)), acc1(T(0));
    for (; i + 2 * W <= n; i += 2 * W) {
      acc0 = xsimd::fma(V::load_unaligned(a + i), V::load_unaligned(b + i), acc0);
      acc1 = xsimd::fma(V::load_unaligned(a + i + W), V::load_unaligned(b + i + W), acc1);
    }
    for (; i + W <= n; i += W)
      acc0 = xsimd::fma(V::load_unaligned(a + i), V::load_unaligned(b + i), acc0);
    s = xsimd::hadd(acc0 + acc1);
  }
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[i] += alpha x[i]
template <class T>
void attn_axpy(T alpha, const T* x, T* y, int64_t n) {
  int64_t i = 0;
  if constexpr (Vectorizable<T>) {
    using V = xsimd::batch<T>;
    constexpr int64_t W = V::size;
    const V va(alpha);
    for (; i + W <= n; i += W)
      xsimd::fma(va, V::load_unaligned(x + i), V::load_unaligned(y + i)).store_unaligned(y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// y[i] *= alpha
template <class T>
void attn_scale(T alpha, T* y, int64_t n) {
  int64_t i = 0;
  if constexpr (Vectorizable<T>) {
    using V = xsimd::batch<T>;
    constexpr int64_t W = V::size;
    const V va(alpha);
    for (; i + W <= n; i += W) (va * V::load_unaligned(y + i)).store_unaligned(y + i);
  }
  for (; i < n; ++i) y[i] *= alpha;
}

// Work below this many multiply-adds stays on one thread.
inline constexpr int64_t kAttentionParallelFlops = 1 << 15;

}  // namespace cpu_detail

// out [B, Hq, T, Dh] (contiguous, preallocated) = causal softmax(scale q k^T) v; query head h
// reads kv head h / (Hq / Hkv). If lse is given (contiguous [B, Hq, T]) the per-row
// logsumexp of the scaled scores is stored there. Shapes are checked by the op.
template <class T>
void causal_attention_forward_rows(cpu, const Tensor<T, cpu>& q_in, const Tensor<T, cpu>& k_in,
                                   const Tensor<T, cpu>& v_in, T scale, Tensor<T, cpu>& out,
                                   Tensor<T, cpu>* lse) {
  using namespace cpu_detail;
  const auto q_t = unit_inner(q_in), k_t = unit_inner(k_in), v_t = unit_inner(v_in);
  const auto q = head_rows(q_t), k = head_rows(k_t), v = head_rows(v_t);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T_len = q_in.size(2), D = q_in.size(3);
  const int64_t group = Hq / k_in.size(1);
  T* o = out.data();
  T* lse_p = lse ? lse->data() : nullptr;
  const int64_t tasks = B * Hq;
  const bool big =
      tasks > 1 && tasks * T_len * T_len * std::max<int64_t>(D, 1) / 2 >= kAttentionParallelFlops;
#pragma omp parallel if (big)
  {
    // Scratch as a tensor: its memory comes from the block cache (no heap per call).
    const auto s_buf = Tensor<T, cpu>::empty({std::max<int64_t>(T_len, 1)});
    T* s = s_buf.data();
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / Hq, h = task % Hq, hk = h / group;
      for (int64_t i = 0; i < T_len; ++i) {
        const T* qi = q.row(b, h, i);
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          s[j] = scale * attn_dot(qi, k.row(b, hk, j), D);
          m = std::max(m, s[j]);
        }
        T* oi = o + (task * T_len + i) * D;
        std::fill(oi, oi + D, T(0));
        T l = T(0);
        for (int64_t j = 0; j <= i; ++j) {
          const T p = std::exp(s[j] - m);
          l += p;
          attn_axpy(p, v.row(b, hk, j), oi, D);
        }
        attn_scale(T(1) / l, oi, D);
        if (lse_p) lse_p[task * T_len + i] = m + std::log(l);
      }
    }
  }
}

// Gradients of causal_attention_forward given the output gradient dout. dq, dk, dv are
// preallocated contiguous tensors shaped like q, k, v; they are overwritten. out and lse are
// the forward's (contiguous).
template <class T>
void causal_attention_backward_rows(cpu, const Tensor<T, cpu>& q_in, const Tensor<T, cpu>& k_in,
                                    const Tensor<T, cpu>& v_in, const Tensor<T, cpu>& out,
                                    const Tensor<T, cpu>& lse, const Tensor<T, cpu>& dout_in,
                                    T scale, Tensor<T, cpu>& dq_out, Tensor<T, cpu>& dk_out,
                                    Tensor<T, cpu>& dv_out) {
  using namespace cpu_detail;
  const auto q_t = unit_inner(q_in), k_t = unit_inner(k_in), v_t = unit_inner(v_in);
  const auto do_t = unit_inner(dout_in);
  const auto q = head_rows(q_t), k = head_rows(k_t), v = head_rows(v_t), dout = head_rows(do_t);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T_len = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), group = Hq / Hkv;
  const T* o = out.data();
  const T* lse_p = lse.data();
  T* dq = dq_out.data();
  T* dk = dk_out.data();
  T* dv = dv_out.data();
  const int64_t tasks = B * Hkv;
  const bool big =
      tasks > 1 && B * Hq * T_len * T_len * std::max<int64_t>(D, 1) >= kAttentionParallelFlops;
#pragma omp parallel for schedule(dynamic) if (big)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / Hkv, hk = task % Hkv;
    T* dk_h = dk + task * T_len * D;
    T* dv_h = dv + task * T_len * D;
    std::fill(dk_h, dk_h + T_len * D, T(0));
    std::fill(dv_h, dv_h + T_len * D, T(0));
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const int64_t row0 = (b * Hq + h) * T_len;
      for (int64_t i = 0; i < T_len; ++i) {
        const T* qi = q.row(b, h, i);
        const T* doi = dout.row(b, h, i);
        const T di = attn_dot(doi, o + (row0 + i) * D, D);
        const T lse_i = lse_p[row0 + i];
        T* dqi = dq + (row0 + i) * D;
        std::fill(dqi, dqi + D, T(0));
        for (int64_t j = 0; j <= i; ++j) {
          const T* kj = k.row(b, hk, j);
          const T p = std::exp(scale * attn_dot(qi, kj, D) - lse_i);
          const T dp = attn_dot(doi, v.row(b, hk, j), D);
          const T ds = scale * p * (dp - di);
          attn_axpy(ds, kj, dqi, D);
          attn_axpy(ds, qi, dk_h + j * D, D);
          attn_axpy(p, doi, dv_h + j * D, D);
        }
      }
    }
  }
}

namespace cpu_detail {

// The [T, Dh] matrix of head (b, h), rows st apart.
template <class T>
MatView<const T> head_matrix(const HeadRows<T>& x, int64_t b, int64_t h, int64_t T_len, int64_t D) {
  return {x.row(b, h, 0), T_len, D, x.st, 1};
}

// Row i of the scores s (scaled) -> causal probabilities exp(s - lse) with lse computed here
// (forward) or given (backward); entries past the diagonal become 0.
template <class T>
T softmax_causal_row(T* s, int64_t i, int64_t T_len) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j <= i; ++j) m = std::max(m, s[j]);
  T l = T(0);
  for (int64_t j = 0; j <= i; ++j) l += (s[j] = std::exp(s[j] - m));
  const T inv = T(1) / l;
  for (int64_t j = 0; j <= i; ++j) s[j] *= inv;
  std::fill(s + i + 1, s + T_len, T(0));
  return m + std::log(l);
}

// The GEMM kernels run for these sequence lengths (scratch: two T x T blocks per thread).
inline bool attention_on_gemm(int64_t T_len) {
  return T_len >= 16 && T_len <= 1024;
}

}  // namespace cpu_detail

template <class T>
// saved_bf16 (for the backward) is the CUDA kernels' packed operands; the CPU keeps none.
void causal_attention_forward(cpu, const Tensor<T, cpu>& q_in, const Tensor<T, cpu>& k_in,
                              const Tensor<T, cpu>& v_in, T scale, Tensor<T, cpu>& out,
                              Tensor<T, cpu>* lse, Tensor<bf16, cpu>* saved_bf16 = nullptr) {
  (void)saved_bf16;
  using namespace cpu_detail;
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T_len = q_in.size(2), D = q_in.size(3);
  if (!attention_on_gemm(T_len) || D == 0) {
    causal_attention_forward_rows(cpu{}, q_in, k_in, v_in, scale, out, lse);
    return;
  }
  const auto q_t = unit_inner(q_in), k_t = unit_inner(k_in), v_t = unit_inner(v_in);
  const auto q = head_rows(q_t), k = head_rows(k_t), v = head_rows(v_t);
  const int64_t group = Hq / k_in.size(1), tasks = B * Hq;
#pragma omp parallel if (tasks > 1)
  {
    const auto s_buf = Tensor<T, cpu>::empty({T_len, T_len});  // from the block cache
    T* s = s_buf.data();
    const MatView<T> sv{s, T_len, T_len, T_len, 1};
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / Hq, h = task % Hq, hk = h / group;
      const auto kh = head_matrix(k, b, hk, T_len, D);
      gemm_packed(cpu{}, head_matrix(q, b, h, T_len, D), gemm_detail::transposed(kh), sv, scale,
                  T(0));
      for (int64_t i = 0; i < T_len; ++i) {
        const T l = softmax_causal_row(s + i * T_len, i, T_len);
        if (lse) lse->data()[task * T_len + i] = l;
      }
      gemm_packed(cpu{}, MatView<const T>{s, T_len, T_len, T_len, 1},
                  head_matrix(v, b, hk, T_len, D),
                  MatView<T>{out.data() + task * T_len * D, T_len, D, D, 1}, T(1), T(0));
    }
  }
}

template <class T>
void causal_attention_backward(cpu, const Tensor<T, cpu>& q_in, const Tensor<T, cpu>& k_in,
                               const Tensor<T, cpu>& v_in, const Tensor<T, cpu>& out,
                               const Tensor<T, cpu>& lse, const Tensor<T, cpu>& dout_in, T scale,
                               Tensor<T, cpu>& dq_out, Tensor<T, cpu>& dk_out,
                               Tensor<T, cpu>& dv_out,
                               const Tensor<bf16, cpu>* saved_bf16 = nullptr) {
  (void)saved_bf16;
  using namespace cpu_detail;
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T_len = q_in.size(2), D = q_in.size(3);
  if (!attention_on_gemm(T_len) || D == 0) {
    causal_attention_backward_rows(cpu{}, q_in, k_in, v_in, out, lse, dout_in, scale, dq_out,
                                   dk_out, dv_out);
    return;
  }
  const auto q_t = unit_inner(q_in), k_t = unit_inner(k_in), v_t = unit_inner(v_in);
  const auto do_t = unit_inner(dout_in);
  const auto q = head_rows(q_t), k = head_rows(k_t), v = head_rows(v_t), dout = head_rows(do_t);
  const int64_t Hkv = k_in.size(1), group = Hq / Hkv, tasks = B * Hkv;
#pragma omp parallel if (tasks > 1)
  {
    const auto p_buf = Tensor<T, cpu>::empty({T_len, T_len});
    const auto ds_buf = Tensor<T, cpu>::empty({T_len, T_len});
    T* p = p_buf.data();
    T* ds = ds_buf.data();
    const MatView<T> pv{p, T_len, T_len, T_len, 1}, dsv{ds, T_len, T_len, T_len, 1};
    const MatView<const T> pc{p, T_len, T_len, T_len, 1}, dsc{ds, T_len, T_len, T_len, 1};
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / Hkv, hk = task % Hkv;
      const auto kh = head_matrix(k, b, hk, T_len, D), vh = head_matrix(v, b, hk, T_len, D);
      const MatView<T> dkh{dk_out.data() + task * T_len * D, T_len, D, D, 1};
      const MatView<T> dvh{dv_out.data() + task * T_len * D, T_len, D, D, 1};
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const int64_t row0 = (b * Hq + h) * T_len;
        const T beta = h == hk * group ? T(0) : T(1);  // the first query head overwrites
        const auto qh = head_matrix(q, b, h, T_len, D), doh = head_matrix(dout, b, h, T_len, D);
        gemm_packed(cpu{}, qh, gemm_detail::transposed(kh), pv, scale, T(0));  // S
        for (int64_t i = 0; i < T_len; ++i) {
          T* pi = p + i * T_len;
          const T l = lse.data()[row0 + i];
          for (int64_t j = 0; j <= i; ++j) pi[j] = std::exp(pi[j] - l);
          std::fill(pi + i + 1, pi + T_len, T(0));
        }
        gemm_packed(cpu{}, gemm_detail::transposed(pc), doh, dvh, T(1), beta);  // dV += P^T dO
        gemm_packed(cpu{}, doh, gemm_detail::transposed(vh), dsv, T(1), T(0));  // dP = dO V^T
        for (int64_t i = 0; i < T_len; ++i) {  // dS = P (dP - D_i), D_i = dO_i . O_i
          const T di = attn_dot(dout.row(b, h, i), out.data() + (row0 + i) * D, D);
          T* dsi = ds + i * T_len;
          const T* pi = p + i * T_len;
          for (int64_t j = 0; j < T_len; ++j) dsi[j] = pi[j] * (dsi[j] - di);
        }
        gemm_packed(cpu{}, dsc, kh, MatView<T>{dq_out.data() + row0 * D, T_len, D, D, 1}, scale,
                    T(0));
        gemm_packed(cpu{}, gemm_detail::transposed(dsc), qh, dkh, scale,
                    beta);  // dK += scale dS^T Q
      }
    }
  }
}

}  // namespace ternary::backend
