// Our own CPU GEMM, C = alpha * A B + beta * C on strided 2-d views, written the GotoBLAS /
// BLIS way: B is packed into KC x NR panels and A into MC x KC blocks of MR-row strips, and an
// MR x NR register tile (xsimd FMA) runs over them. Packing reads any strides, so transposed
// or sliced operands cost no extra copy; the packed panels are zero-padded to whole tiles, so
// the micro-kernel has no edge cases and only the write-back of an edge tile is partial.
//
// Why not Eigen's GEMM (kept as gemm_eigen in matmul.hpp): on the 2-core AVX2 dev VM it ran
// at 59-64 GFLOP/s on one core where OpenBLAS reached 84-89 at the GPT's shapes, and our
// training step spends over half its time in GEMM. Figures: docs/benchmarks.md.
//
// Blocking (float, Zen 3: 32 KiB L1d, 512 KiB L2 per core): a 6 x 16 tile keeps 12 ymm
// accumulators, 2 B vectors and 1 A broadcast in the 16 registers; an MC x KC A block
// (96 x 512: 192 KiB) stays in L2, the KC x NC B block in L3. KC 512 / MC 96 was measured
// best of KC 256-1024 x MC 48-240 at the GPT's shapes (KC 256 lost ~12% where K = 1024:
// C is re-read once per K block).
//
// Threads: C is split into one block of rows (or columns, whichever side is longer) per
// thread, each thread packing its own operands; products below 2^26 multiply-adds and calls
// from inside a parallel region run on one thread. Pack buffers come from a pool, 64-byte
// aligned, grown on demand and reused: after a training step's first GEMMs, no allocation.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#include "ternary/core/simd.hpp"

#include "ternary/backend/cpu/cpu.hpp"
#include "ternary/core/error.hpp"

namespace ternary::backend {

// A 2-d strided window on memory (strides in elements).
template <class T>
struct MatView {
  T* data;
  int64_t rows, cols;
  int64_t row_stride, col_stride;
};

namespace gemm_detail {

// Register tile and cache blocks per element type (see the header comment for why). The
// tile is 6 rows x 2 SIMD vectors of whatever width the build targets (16 floats with AVX2,
// 8 with SSE2, 32 with AVX-512).
template <class T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int MR = 6, NR = 2 * int(xsimd::batch<float>::size);
  static constexpr int64_t KC = 512, MC = 96, NC = 4096;
};
template <>
struct Blocking<double> {
  static constexpr int MR = 6, NR = 2 * int(xsimd::batch<double>::size);
  static constexpr int64_t KC = 256, MC = 72, NC = 2048;
};

// Calls f(integral_constant<int, I>) for I in [0, N): a loop the compiler must unroll, so the
// accumulator array lives in registers.
template <int N, class F>
inline void unrolled(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// Pack buffers: 64-byte aligned scratch areas that only grow, lent from a pool for the length
// of one gemm_serial call. Not thread_local: a GEMM called inside an inactive parallel region
// (ops/matmul.hpp's batch loop with one batch) runs in a nested team whose threads libgomp
// creates afresh each time, so thread_local buffers were freed and re-allocated ~25 times per
// training step. A buffer that must grow grows to the largest size any call has asked for, so
// after the first training step no call allocates.
struct PackBuffer {
  void* p = nullptr;
  size_t bytes = 0;
};
class PackPool {
 public:
  // give() must not allocate in the common case. One buffer per thread up front: how many
  // GEMMs overlap depends on timing (two matrices of a batched matmul on two threads may or
  // may not run at once), so growing the list on demand would allocate in whichever training
  // step first overlaps them (tests/test_alloc.cpp failed so once in CI, under load).
  PackPool() {
    free_.reserve(64);
    for (int i = 0; i < std::min(std::max(omp_get_max_threads(), 1), 64); ++i)
      free_.push_back(new PackBuffer);
  }
  PackBuffer* take(size_t n) {
    PackBuffer* b;
    size_t want;
    {
      std::lock_guard<std::mutex> lock(m_);
      high_ = std::max(high_, (n + 4095) / 4096 * 4096);
      want = high_;
      if (free_.empty()) {
        b = new PackBuffer;
      } else {
        b = free_.back();
        free_.pop_back();
      }
    }
    if (b->bytes < n) {
      std::free(b->p);
      b->p = std::aligned_alloc(64, want);
      b->bytes = b->p ? want : 0;
      if (!b->p) {
        give(b);
        throw std::bad_alloc();
      }
    }
    return b;
  }
  void give(PackBuffer* b) {
    std::lock_guard<std::mutex> lock(m_);
    free_.push_back(b);
  }

 private:
  std::mutex m_;
  std::vector<PackBuffer*> free_;
  size_t high_ = 0;
};
// Never destroyed: a GEMM may run during static destruction.
inline PackPool& pack_pool() {
  static PackPool* pool = new PackPool;
  return *pool;
}
// A buffer of at least n bytes for the lifetime of the lease.
class PackLease {
 public:
  explicit PackLease(size_t n) : b_(pack_pool().take(n)) {}
  ~PackLease() { pack_pool().give(b_); }
  PackLease(const PackLease&) = delete;
  PackLease& operator=(const PackLease&) = delete;
  void* data() const { return b_->p; }

 private:
  PackBuffer* b_;
};

// A[i0 : i0+mc, p0 : p0+kc] -> strips of MR rows, each stored k-major (MR values per k),
// rows past the end zero-filled.
template <int MR, class T>
void pack_a(const MatView<const T>& a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, T* dst) {
  const int64_t rs = a.row_stride, cs = a.col_stride;
  for (int64_t i = 0; i < mc; i += MR, dst += MR * kc) {
    const int64_t mr = std::min<int64_t>(MR, mc - i);
    const T* src = a.data + (i0 + i) * rs + p0 * cs;
    if (mr == MR && rs == 1) {  // column-major A (e.g. a transposed view): MR contiguous
      for (int64_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = src[k * cs + r];
    } else if (mr == MR && cs == 1) {  // row-major A: MR contiguous rows, interleaved
      const T* row[MR];
      for (int r = 0; r < MR; ++r) row[r] = src + r * rs;
      for (int64_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = row[r][k];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < mr ? src[r * rs + k * cs] : T(0);
    }
  }
}

// B[p0 : p0+kc, j0 : j0+nc] -> panels of NR columns, each stored k-major (NR values per k),
// columns past the end zero-filled.
template <int NR, class T>
void pack_b(const MatView<const T>& b, int64_t p0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  const int64_t rs = b.row_stride, cs = b.col_stride;
  for (int64_t j = 0; j < nc; j += NR, dst += NR * kc) {
    const int64_t nr = std::min<int64_t>(NR, nc - j);
    const T* src = b.data + p0 * rs + (j0 + j) * cs;
    if (nr == NR && cs == 1) {  // row-major B: NR contiguous values per k
      for (int64_t k = 0; k < kc; ++k)
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = src[k * rs + c];
    } else if (nr == NR && rs == 1) {  // column-major B (e.g. W^T): read columns contiguously
      for (int c = 0; c < NR; ++c)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = src[c * cs + k];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < nr ? src[k * rs + c * cs] : T(0);
    }
  }
}

// One MR x NR tile of C: acc = sum_k ap[k, :]^T bp[k, :], then the first K block stores
// alpha acc + beta C (never reading C when beta == 0) and later blocks add alpha acc.
// Full tiles of a C with unit column stride are written with vector loads and stores; edge
// tiles and other strides go through a small buffer and a scalar loop.
template <class T, int MR, int NR>
inline void micro_tile(int64_t kc, const T* __restrict ap, const T* __restrict bp, T* c, int64_t rs,
                       int64_t cs, int64_t mr, int64_t nr, T alpha, T beta, bool first) {
  using V = xsimd::batch<T>;
  constexpr int W = int(V::size), NV = NR / W;
  static_assert(MR == 6 && NV == 2, "the register tile is written out for 6 x (2 vectors)");
  // Twelve named accumulators, not an array: GCC kept an array of them in memory, storing
  // all twelve every iteration (measured: 28 instead of 60+ GFLOP/s on one core).
  V c00(T(0)), c01(T(0)), c10(T(0)), c11(T(0)), c20(T(0)), c21(T(0));
  V c30(T(0)), c31(T(0)), c40(T(0)), c41(T(0)), c50(T(0)), c51(T(0));
  // C is read (or written) only after the loop: fetch its lines now, so that a C too large
  // for the caches (4096 x 256 floats at the GPT's shapes) does not stall the write-back.
  if (mr == MR && cs == 1)
    unrolled<MR>([&](auto r) {
      __builtin_prefetch(c + r * rs, 1);
      __builtin_prefetch(c + r * rs + NR - 1, 1);
    });
#if !defined(__CUDACC__)  // nvcc's host front end does not know the pragma
#pragma GCC unroll 4
#endif
  for (int64_t k = 0; k < kc; ++k, ap += MR, bp += NR) {
    const V b0 = V::load_aligned(bp), b1 = V::load_aligned(bp + W);
    V a(ap[0]);
    c00 = xsimd::fma(a, b0, c00), c01 = xsimd::fma(a, b1, c01);
    a = V(ap[1]);
    c10 = xsimd::fma(a, b0, c10), c11 = xsimd::fma(a, b1, c11);
    a = V(ap[2]);
    c20 = xsimd::fma(a, b0, c20), c21 = xsimd::fma(a, b1, c21);
    a = V(ap[3]);
    c30 = xsimd::fma(a, b0, c30), c31 = xsimd::fma(a, b1, c31);
    a = V(ap[4]);
    c40 = xsimd::fma(a, b0, c40), c41 = xsimd::fma(a, b1, c41);
    a = V(ap[5]);
    c50 = xsimd::fma(a, b0, c50), c51 = xsimd::fma(a, b1, c51);
  }
  const V acc[MR][NV] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  const V va(alpha), vb(beta);
  if (mr == MR && nr == NR && cs == 1) {
    unrolled<MR>([&](auto r) {
      T* cr = c + r * rs;
      unrolled<NV>([&](auto v) {
        T* p = cr + v * W;
        V out;
        if (!first)
          out = xsimd::fma(va, acc[r][v], V::load_unaligned(p));
        else if (beta == T(0))
          out = va * acc[r][v];
        else
          out = xsimd::fma(va, acc[r][v], vb * V::load_unaligned(p));
        out.store_unaligned(p);
      });
    });
    return;
  }
  alignas(64) T tile[MR * NR];
  unrolled<MR>([&](auto r) {
    unrolled<NV>([&](auto v) { acc[r][v].store_aligned(tile + r * NR + v * W); });
  });
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      T& x = c[i * rs + j * cs];
      const T s = alpha * tile[i * NR + j];
      x = !first ? x + s : beta == T(0) ? s : s + beta * x;
    }
}

// The whole product on the calling thread (shapes already checked, K > 0).
template <class T>
void gemm_serial(const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c, T alpha,
                 T beta) {
  using Bl = Blocking<T>;
  constexpr int MR = Bl::MR, NR = Bl::NR;
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  const int64_t kc_max = std::min(Bl::KC, K);
  const int64_t mc_max = std::min(Bl::MC, (M + MR - 1) / MR * MR);
  const int64_t nc_max = std::min(Bl::NC, (N + NR - 1) / NR * NR);
  const size_t a_elems = size_t(mc_max * kc_max), b_elems = size_t(nc_max * kc_max);
  PackLease buf((a_elems + b_elems) * sizeof(T) + 64);
  T* bp = static_cast<T*>(buf.data());
  constexpr size_t per_line = 64 / sizeof(T);  // elements per 64 bytes: ap stays aligned
  T* ap = bp + (b_elems + per_line - 1) / per_line * per_line;
  for (int64_t jc = 0; jc < N; jc += Bl::NC) {
    const int64_t nc = std::min(Bl::NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += Bl::KC) {
      const int64_t kc = std::min(Bl::KC, K - pc);
      const bool first = pc == 0;
      pack_b<NR>(b, pc, kc, jc, nc, bp);
      for (int64_t ic = 0; ic < M; ic += Bl::MC) {
        const int64_t mc = std::min(Bl::MC, M - ic);
        pack_a<MR>(a, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            micro_tile<T, MR, NR>(kc, ap + ir * kc, bp + jr * kc,
                                  c.data + (ic + ir) * c.row_stride + (jc + jr) * c.col_stride,
                                  c.row_stride, c.col_stride, mr, nr, alpha, beta, first);
          }
        }
      }
    }
  }
}

template <class T>
MatView<T> transposed(const MatView<T>& v) {
  return {v.data, v.cols, v.rows, v.col_stride, v.row_stride};
}

}  // namespace gemm_detail

// C = A B needs A [M, K], B [K, N], C [M, N]; the message names all three shapes.
template <class T>
void check_gemm_shapes(const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c) {
  if (a.cols != b.rows || c.rows != a.rows || c.cols != b.cols)
    throw ShapeError(detail::cat("gemm: [", a.rows, ", ", a.cols, "] x [", b.rows, ", ", b.cols,
                                 "] -> [", c.rows, ", ", c.cols, "]"));
}

// C = alpha * A B + beta * C for any strides of A, B and C (C's elements must not alias A's or
// B's). beta == 0 never reads C, so C may hold garbage (NaN) on entry.
template <class T>
void gemm_packed(cpu, const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c,
                 T alpha, T beta) {
  using namespace gemm_detail;
  check_gemm_shapes(a, b, c);
  if (c.rows == 0 || c.cols == 0) return;
  if (a.cols == 0) {  // empty sum: C = beta C
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = 0; j < c.cols; ++j) {
        T& x = c.data[i * c.row_stride + j * c.col_stride];
        x = beta == T(0) ? T(0) : beta * x;
      }
    return;
  }
  // A column-major C is computed as C^T = B^T A^T, so the write-back gets unit stride.
  if (c.col_stride != 1 && c.cols > 1 && (c.row_stride == 1 || c.rows == 1)) {
    gemm_packed(cpu{}, transposed(b), transposed(a), transposed(c), alpha, beta);
    return;
  }
  // Below this many multiply-adds one thread is faster: waking the second costs up to ~90 us
  // on the dev VM (the same rule as the Eigen path).
  constexpr int64_t kParallelMacs = int64_t(1) << 26;
  const int64_t M = c.rows, N = c.cols, K = a.cols;
  const int threads = omp_in_parallel() || M * N * K < kParallelMacs ? 1 : omp_get_max_threads();
  if (threads == 1) {
    gemm_serial(a, b, c, alpha, beta);
    return;
  }
  // One block of C per thread along its longer side, in whole register tiles.
  const bool by_rows = M >= N;
  const int64_t n = by_rows ? M : N, unit = by_rows ? Blocking<T>::MR : Blocking<T>::NR;
  const int64_t chunk = ((n + threads - 1) / threads + unit - 1) / unit * unit;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) {
    const int64_t s0 = std::min(n, t * chunk), s1 = std::min(n, s0 + chunk);
    if (s0 >= s1) continue;
    if (by_rows)
      gemm_serial<T>({a.data + s0 * a.row_stride, s1 - s0, K, a.row_stride, a.col_stride}, b,
                     {c.data + s0 * c.row_stride, s1 - s0, N, c.row_stride, c.col_stride}, alpha,
                     beta);
    else
      gemm_serial<T>(a, {b.data + s0 * b.col_stride, K, s1 - s0, b.row_stride, b.col_stride},
                     {c.data + s0 * c.col_stride, M, s1 - s0, c.row_stride, c.col_stride}, alpha,
                     beta);
  }
}

}  // namespace ternary::backend
