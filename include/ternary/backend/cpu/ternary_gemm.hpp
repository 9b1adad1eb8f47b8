// Inference GEMM for ternary weights: int8 activations times packed trits, int32
// accumulation, then one float scale per weight group and one per activation row:
//   out[r, o] = sum_g  wscale[o, g] * (sum_{k in g} q[r, k] * t[o, k]) / ascale[r]
// This is the simple reference kernel (unpack a weight row, integer dot products); the
// tests hold it to the float training forward.
#pragma once

#include <cstdint>
#include <vector>

#include "ternary/backend/cpu/cpu.hpp"

namespace ternary::backend {

// act: [rows, K] int8, ascale[rows] (x ~= act / ascale); weights: 2-bit packed trits of
// [N, K], wscale: one per `group` consecutive weights (row-major over [N, K]); out: [rows, N].
inline void ternary_gemm_reference(cpu, const int8_t* act, const float* ascale, int64_t rows, int64_t K,
                                   const uint8_t* packed, const float* wscale, int64_t group, int64_t N,
                                   float* out) {
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

}  // namespace ternary::backend
