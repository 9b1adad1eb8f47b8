// Inference GEMM for ternary weights: int8 activations times packed trits, int32
// accumulation, then one float scale per weight group and one per activation row:
//   out[r, o] = sum_g  wscale[o, g] * (sum_{k in g} q[r, k] * t[o, k]) / ascale[r]
// ternary_gemm_reference is the simple kernel (unpack a weight row, integer dot products; the
// tests hold it to the float training forward); ternary_gemm picks the AVX2 kernel below
// where it applies. Benchmarks: bench/bench_kernels.cpp (BM_ternary_gemv*).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

// <immintrin.h> through it (the AVX2 kernel's intrinsics; see there for why)
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"

namespace ternary::backend {

// act: [rows, K] int8, ascale[rows] (x ~= act / ascale); weights: 2-bit packed trits of
// [N, K], wscale: one per `group` consecutive weights (row-major over [N, K]); out: [rows, N].
inline void ternary_gemm_reference(cpu, const int8_t* act, const float* ascale, int64_t rows,
                                   int64_t K, const uint8_t* packed, const float* wscale,
                                   int64_t group, int64_t N, float* out) {
#pragma omp parallel
  {
    std::vector<int8_t> w(K);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < N; ++o) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = o * K + k;
        w[k] = int8_t(((packed[i / 4] >> (2 * (i % 4))) & 3) - 1);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int8_t* a = act + r * K;
        float acc = 0;
        int64_t k = 0;
        while (k < K) {  // one integer dot product per scale group inside this row
          const int64_t i = o * K + k;
          const int64_t end = std::min(K, k + (group - i % group));
          int32_t dot = 0;
          for (; k < end; ++k) dot += int32_t(a[k]) * int32_t(w[k]);
          acc += wscale[i / group] * float(dot);
        }
        out[r * N + o] = acc / ascale[r];
      }
    }
  }
}

// ---- the fast kernel ----------------------------------------------------------------------
// AVX2 (chosen at compile time: -mavx2 / -march=native on a CPU that has it). A weight byte
// holds trits 4b..4b+3 as codes c = t + 1 in {0, 1, 2}; 32 bytes decode, with shifts and
// masks, into four vectors of 32 codes: vector j holds trits 4b + j of a 128-trit block. The
// activations are reordered once per call to the same layout, so each block is four
// _mm256_maddubs_epi16(codes (u8), act (s8)) products. The code offset is removed with the
// row sum of the activations: sum (c - 1) a = sum c a - sum a. Per 128-trit block the four
// int16 partial sums are at most 4 * 2 * 2 * 128 = 2048 in magnitude (no int16 overflow),
// then widened to int32 with _mm256_madd_epi16. Rows of activations are taken four at a time
// so each decoded weight block is used four times (GEMM); one row is the GEMV.
//
// The fast path needs byte-aligned weight rows (K % 4 == 0) and scale groups that do not
// split a 128-trit block (group a multiple of K, or a multiple of 128 dividing K); other
// shapes take the reference kernel. tests/test_ternary_gemm.cpp holds the two to each other.
namespace cpu_detail {

inline bool ternary_fast_ok(int64_t K, int64_t group) {
  if (K <= 0 || K % 4 != 0 || group <= 0) return false;
  return group % K == 0 || (K % group == 0 && group % 128 == 0);
}

#if defined(__AVX2__)
inline constexpr bool kTernaryAvx2 = true;

// Reorders a row of K activations: block b of 128 becomes [a[4i] | a[4i+1] | a[4i+2] |
// a[4i+3]] for i = 0..31; the tail past the last full block stays in place.
inline void ternary_reorder_row(const int8_t* a, int8_t* out, int64_t K) {
  const int64_t full = K / 128 * 128;
  for (int64_t b = 0; b < full; b += 128)
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 32; ++i) out[b + 32 * j + i] = a[b + 4 * i + j];
  for (int64_t k = full; k < K; ++k) out[k] = a[k];
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// sum_k code[k] * a[k] over [k0, k1) of one weight row for R (<= 4) activation rows, where
// [k0, k1) covers whole 128-blocks of the reordered layout (k0, k1 multiples of 128).
template <int R>
inline void ternary_blocks(const uint8_t* wrow, const int8_t* const* a, int64_t k0, int64_t k1,
                           int32_t* dot) {
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
  for (int64_t k = k0; k < k1; k += 128) {
    const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + k / 4));
    const __m256i c0 = _mm256_and_si256(p, mask);
    const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(p, 2), mask);
    const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
    const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(p, 6), mask);
    for (int r = 0; r < R; ++r) {
      const int8_t* ar = a[r] + k;
      auto ld = [&](int j) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + 32 * j));
      };
      __m256i s =
          _mm256_add_epi16(_mm256_maddubs_epi16(c0, ld(0)), _mm256_maddubs_epi16(c1, ld(1)));
      s = _mm256_add_epi16(
          s, _mm256_add_epi16(_mm256_maddubs_epi16(c2, ld(2)), _mm256_maddubs_epi16(c3, ld(3))));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s, ones));
    }
  }
  for (int r = 0; r < R; ++r) dot[r] = hsum_epi32(acc[r]);
}
#else
inline constexpr bool kTernaryAvx2 = false;
#endif

}  // namespace cpu_detail

#if defined(__AVX2__)
// Same contract as ternary_gemm_reference (fast-path shapes only: see ternary_fast_ok).
inline void ternary_gemm_avx2(cpu, const int8_t* act, const float* ascale, int64_t rows, int64_t K,
                              const uint8_t* packed, const float* wscale, int64_t group, int64_t N,
                              float* out) {
  using namespace cpu_detail;
  if (rows <= 0 || N <= 0) return;
  // Reordered activations and, per row, the sum of each scale segment (the code offset).
  const int64_t seg = std::min(group, K), nseg = K / seg, full = K / 128 * 128;
  thread_local std::vector<int8_t> ar;
  thread_local std::vector<int32_t> asum;
  ar.resize(size_t(rows * K));
  asum.resize(size_t(rows * nseg));
  int8_t* arp = ar.data();  // (thread_local: only this thread may name the vectors)
  int32_t* asp = asum.data();
  const bool big = rows * K * N >= (int64_t(1) << 20);
#pragma omp parallel for schedule(static) if (big && rows >= 4)
  for (int64_t r = 0; r < rows; ++r) {
    ternary_reorder_row(act + r * K, arp + r * K, K);
    for (int64_t s = 0; s < nseg; ++s) {
      int32_t t = 0;
      for (int64_t k = s * seg; k < (s + 1) * seg; ++k) t += act[r * K + k];
      asp[r * nseg + s] = t;
    }
  }
#pragma omp parallel for schedule(static) if (big)
  for (int64_t o = 0; o < N; ++o) {
    const uint8_t* wrow = packed + o * K / 4;
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int R = int(std::min<int64_t>(4, rows - r0));
      const int8_t* a[4];
      for (int r = 0; r < 4; ++r) a[r] = arp + (r0 + std::min(r, R - 1)) * K;
      float acc[4] = {0, 0, 0, 0};
      for (int64_t s = 0; s < nseg; ++s) {
        const int64_t k0 = s * seg, k1 = std::min(k0 + seg, full);
        int32_t dot[4] = {0, 0, 0, 0};
        if (k1 > k0) {
          if (R == 4)
            ternary_blocks<4>(wrow, a, k0, k1, dot);
          else if (R == 3)
            ternary_blocks<3>(wrow, a, k0, k1, dot);
          else if (R == 2)
            ternary_blocks<2>(wrow, a, k0, k1, dot);
          else
            ternary_blocks<1>(wrow, a, k0, k1, dot);
        }
        for (int64_t k = std::max(k0, full); k < k0 + seg; ++k) {  // the tail (< 128 trits)
          const int code = (wrow[k / 4] >> (2 * (k % 4))) & 3;
          for (int r = 0; r < R; ++r) dot[r] += code * a[r][k];
        }
        const float ws = wscale[(o * K + k0) / group];
        for (int r = 0; r < R; ++r) acc[r] += ws * float(dot[r] - asp[(r0 + r) * nseg + s]);
      }
      for (int r = 0; r < R; ++r) out[(r0 + r) * N + o] = acc[r] / ascale[r0 + r];
    }
  }
}
#endif

// The kernel the library uses: the AVX2 one where the build and the shape allow it.
inline void ternary_gemm(cpu, const int8_t* act, const float* ascale, int64_t rows, int64_t K,
                         const uint8_t* packed, const float* wscale, int64_t group, int64_t N,
                         float* out) {
#if defined(__AVX2__)
  if (cpu_detail::ternary_fast_ok(K, group)) {
    ternary_gemm_avx2(cpu{}, act, ascale, rows, K, packed, wscale, group, N, out);
    return;
  }
#endif
  ternary_gemm_reference(cpu{}, act, ascale, rows, K, packed, wscale, group, N, out);
}

}  // namespace ternary::backend
