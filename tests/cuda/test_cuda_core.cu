// The CUDA backend's foundation against the CPU backend: device tensors and copies, the
// caching pool, errors, the expression evaluator (one kernel per expression, broadcasting and
// strided views), reduce_sum and the cuBLAS GEMM behind matmul. Tolerances, as relative
// L2 error ||gpu - cpu|| / ||cpu||: elementwise 1e-6 (device libm vs xsimd differ by an ulp
// or two), float sums 1e-4 (both sides accumulate in float, in different orders, over up to
// ~10^3 terms with cancellation: 1.4e-5 was seen), fp32 GEMM 1e-5, TF32 GEMM 5e-3, double 1e-12.
#include <catch2/catch.hpp>
#include <sstream>

#include "cuda_check.hpp"
#include "ternary/backend/cuda/all.cuh"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/reduce.hpp"

using namespace ternary;
using test::rel_err;

TEST_CASE("cuda tensors: copies, host access, printing") {
  Rng rng(1);
  auto h = Tensor<float>::randn({3, 4}, rng);
  Tensor<float, cuda> d = to_device(h);
  CHECK(d.shape() == h.shape());
  CHECK(d.to_vector() == h.to_vector());
  CHECK(to_host(d).to_vector() == h.to_vector());
  // Views copy through the host in their logical order.
  CHECK(to_host(d.t()).to_vector() == h.t().contiguous().to_vector());
  CHECK(d.select(0, 1).select(0, 2).item() == h(1, 2));
  // Element references would dereference device memory: they throw, naming the backend.
  CHECK_THROWS_WITH(d(0, 0), Catch::Contains("cuda") && Catch::Contains("to_vector"));
  CHECK_THROWS_AS(d.at({0, 1}), Error);
  // Factories build on the host and upload.
  auto a = Tensor<float, cuda>::arange(5);
  CHECK(a.to_vector() == std::vector<float>{0, 1, 2, 3, 4});
  CHECK(Tensor<float, cuda>::full({2, 2}, 3.5f).to_vector() == std::vector<float>(4, 3.5f));
  CHECK(Tensor<float, cuda>::zeros({7}).to_vector() == std::vector<float>(7, 0.f));
  CHECK(Tensor<int32_t, cuda>::from({3}, {4, -1, 9}).to_vector() == std::vector<int32_t>{4, -1, 9});
  CHECK(a.to<double>().to_vector() == std::vector<double>{0, 1, 2, 3, 4});
  std::ostringstream os;
  os << a;
  CHECK_THAT(os.str(), Catch::Contains("on cuda") && Catch::Contains("[0, 1, 2, 3, 4]"));
  // clone() is a device copy, independent of the original.
  auto c = d.clone();
  c.fill(1.f);
  CHECK(d.to_vector() == h.to_vector());
}

TEST_CASE("cuda pool: freed blocks are reused, and errors name the CUDA call") {
  auto& pool = backend::cuda_detail::Pool::instance();
  void* p = nullptr;
  {
    auto t = Tensor<float, cuda>::empty({1000});
    p = t.data();
  }
  auto u = Tensor<float, cuda>::empty({1000});
  CHECK(u.data() == p);  // same rounded size: the cached block comes back
  CHECK(pool.live_bytes() >= 4000);
  CHECK(backend::cuda_detail::Pool::round(1) == 512);
  CHECK(backend::cuda_detail::Pool::round((1 << 20) + 1) == (size_t(2) << 20));
  CHECK_THROWS_WITH(TERNARY_CUDA_CHECK(cudaSetDevice(12345)),
                    Catch::Contains("cudaSetDevice") && Catch::Contains("invalid device"));
  CHECK_THROWS_AS(TERNARY_CUDA_CHECK(cudaMemcpy(nullptr, u.data(), 1 << 30, cudaMemcpyDefault)),
                  CudaError);
  (void)cudaGetLastError();
}

// Runs the same expression builder on CPU and GPU tensors and compares.
template <class F>
void check_expr(const char* what, F&& make, double tol = 1e-6) {
  INFO(what);
  auto [cpu_out, gpu_out] = make();
  CHECK(rel_err(gpu_out, cpu_out) < tol);
}

TEST_CASE("cuda elementwise: every functor, fused, against the CPU") {
  Rng rng(2);
  auto ha = Tensor<float>::randn({37, 53}, rng), hb = Tensor<float>::rand({37, 53}, rng, 0.5, 2);
  auto a = to_device(ha), b = to_device(hb);
#define ONE(expr_of)                                                              \
  check_expr(#expr_of, [&] {                                                      \
    auto f = []([[maybe_unused]] const auto& a, [[maybe_unused]] const auto& b) { \
      return expr_of;                                                             \
    };                                                                            \
    Tensor<float> hc = f(ha, hb);                                                 \
    Tensor<float, cuda> dc = f(a, b);                                             \
    return std::pair{hc, dc};                                                     \
  });
  ONE(a + b * 2.f - 1.f)
  ONE(a / b)
  ONE(-a)
  ONE(exp(a) * log(b))
  ONE(sqrt(b) + rsqrt(b))
  ONE(tanh(a) + sigmoid(a))
  ONE(relu(a) + relu2(a) + silu(a))
  ONE(abs(a) + square(a) + reciprocal(b))
  ONE(sign(a) + round(a * 3.f) + step(a))
  ONE(sin(a) + cos(a))
  ONE(clamp(a, -0.5f, 0.5f) + pow(b, 1.7f))
  ONE(maximum(a, b) + minimum(a, 0.1f) + greater(a, b))
#undef ONE
}

TEST_CASE("cuda elementwise: broadcasting, strided views and strided destinations") {
  Rng rng(3);
  for (int trial = 0; trial < 5; ++trial) {
    const int64_t n = 2 + trial, m = 3 + 2 * trial, k = 5 + trial;
    auto hx = Tensor<float>::randn({n, m, k}, rng), hrow = Tensor<float>::randn({k}, rng);
    auto hcol = Tensor<float>::randn({n, 1, 1}, rng), hy = Tensor<float>::randn({k, m, n}, rng);
    auto x = to_device(hx), row = to_device(hrow), col = to_device(hcol), y = to_device(hy);
    // broadcast
    check_expr("x * row + col", [&] {
      return std::pair{Tensor<float>(hx * hrow + hcol), Tensor<float, cuda>(x * row + col)};
    });
    // broadcast blocks of every flat pattern ([1, m, 1], [m, k]) and one that is not flat
    // ([n, 1, k]: broadcast between two kept axes, the strided path)
    auto hmid = Tensor<float>::randn({1, m, 1}, rng), hmk = Tensor<float>::randn({m, k}, rng);
    auto hnk = Tensor<float>::randn({n, 1, k}, rng);
    auto mid = to_device(hmid), mk = to_device(hmk), nk = to_device(hnk);
    check_expr("x * mid + mk - nk", [&] {
      return std::pair{Tensor<float>(hx * hmid + hmk - hnk),
                       Tensor<float, cuda>(x * mid + mk - nk)};
    });
    // a permuted (non-contiguous) operand
    check_expr("x + y.permute", [&] {
      return std::pair{Tensor<float>(hx + hy.permute({2, 1, 0}) * 2.f),
                       Tensor<float, cuda>(x + y.permute({2, 1, 0}) * 2.f)};
    });
    // sliced operands with steps
    check_expr("slices", [&] {
      return std::pair{Tensor<float>(exp(hx.slice(2, 0, k - 1, 2)) - hx.slice(2, 1, k, 2)),
                       Tensor<float, cuda>(exp(x.slice(2, 0, k - 1, 2)) - x.slice(2, 1, k, 2))};
    });
    // strided destination: write into a transposed view and a slice of a bigger tensor
    auto hd = Tensor<float>::zeros({k, m, n});
    auto dd = to_device(hd);
    hd.permute({2, 1, 0}).assign(hx * 3.f + hrow);
    dd.permute({2, 1, 0}).assign(x * 3.f + row);
    CHECK(rel_err(dd, hd) < 1e-6);
    auto hs = Tensor<float>::ones({n, m, 2 * k});
    auto ds = to_device(hs);
    hs.slice(2, 0, 2 * k, 2) += hx;
    ds.slice(2, 0, 2 * k, 2) += x;
    CHECK(rel_err(ds, hs) < 1e-6);
    // aliasing: the evaluator goes through a temporary
    auto hq = Tensor<float>::randn({m, m}, rng);
    auto dq = to_device(hq);
    hq.assign(hq.t() + hq);
    dq.assign(dq.t() + dq);
    CHECK(rel_err(dq, hq) < 1e-6);
  }
  // Shape errors are the same as on the CPU.
  auto a = Tensor<float, cuda>::zeros({2, 3}), b = Tensor<float, cuda>::zeros({4});
  CHECK_THROWS_AS(a + b, ShapeError);
  CHECK_THROWS_AS(a.assign(Tensor<float, cuda>::zeros({3, 3})), ShapeError);
  // Large tensors (grid-stride loop covers more elements than threads) and doubles.
  auto hbig = Tensor<double>::randn({5'000'003}, rng);
  auto dbig = to_device(hbig);
  CHECK(rel_err(Tensor<double, cuda>(exp(dbig * 0.5) + 1.0),
                Tensor<double>(exp(hbig * 0.5) + 1.0)) < 1e-14);
}

TEST_CASE("cuda reduce_sum: random shapes and axes against the CPU") {
  Rng rng(4);
  const std::vector<std::vector<int64_t>> axes_list = {{}, {0}, {1}, {2}, {0, 1}, {1, 2}, {0, 2}};
  for (int trial = 0; trial < 4; ++trial) {
    const int64_t n = 1 + 3 * trial, m = 7 + 50 * trial, k = 3 + 300 * trial;
    auto hx = Tensor<float>::randn({n, m, k}, rng);
    auto x = to_device(hx);
    for (const auto& axes : axes_list) {
      INFO("shape " << hx.shape() << " axes " << axes.size());
      CHECK(rel_err(sum(x, axes), sum(hx, axes)) < 1e-4);
      CHECK(rel_err(mean(x, axes, true), mean(hx, axes, true)) < 1e-4);
      // non-contiguous input
      CHECK(rel_err(sum(x.transpose(0, 2), axes), sum(hx.transpose(0, 2), axes)) < 1e-4);
    }
    // sum_to: the backward of broadcasting (leading and inner axes)
    CHECK(rel_err(sum_to(x, Shape{k}), sum_to(hx, Shape{k})) < 1e-4);
    CHECK(rel_err(sum_to(x, Shape{m, 1}), sum_to(hx, Shape{m, 1})) < 1e-4);
  }
  CHECK(sum(Tensor<float, cuda>::zeros({0, 3}), {0}).to_vector() == std::vector<float>(3, 0.f));
}

TEST_CASE("cuda gemm / matmul: layouts, batches, precision") {
  Rng rng(5);
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t M = 1 + 17 * trial, K = 3 + 29 * trial, N = 2 + 13 * trial;
    auto ha = Tensor<float>::randn({M, K}, rng), hb = Tensor<float>::randn({K, N}, rng);
    auto hat = Tensor<float>::randn({K, M}, rng), hbt = Tensor<float>::randn({N, K}, rng);
    auto a = to_device(ha), b = to_device(hb), at = to_device(hat), bt = to_device(hbt);
    INFO("M K N = " << M << " " << K << " " << N);
    CHECK(rel_err(matmul(a, b), matmul(ha, hb)) < 1e-5);
    CHECK(rel_err(matmul(at.t(), b), matmul(hat.t(), hb)) < 1e-5);
    CHECK(rel_err(matmul(a, bt.t()), matmul(ha, hbt.t())) < 1e-5);
    CHECK(rel_err(matmul(at.t(), bt.t()), matmul(hat.t(), hbt.t())) < 1e-5);
    // an operand with no unit stride (every other column): copied once
    auto hw = Tensor<float>::randn({K, 2 * N}, rng);
    auto w = to_device(hw);
    CHECK(rel_err(matmul(a, w.slice(1, 0, 2 * N, 2)), matmul(ha, hw.slice(1, 0, 2 * N, 2))) < 1e-5);
    // batched with broadcasting: [3, 1, M, K] x [2, K, N] -> [3, 2, M, N]
    auto hA = Tensor<float>::randn({3, 1, M, K}, rng), hB = Tensor<float>::randn({2, K, N}, rng);
    CHECK(rel_err(matmul(to_device(hA), to_device(hB)), matmul(hA, hB)) < 1e-5);
    // [B, T, K] x [K, N]: folded into one GEMM
    auto hX = Tensor<float>::randn({4, M, K}, rng);
    CHECK(rel_err(matmul(to_device(hX), b), matmul(hX, hb)) < 1e-5);
    // double
    auto hd = ha.to<double>(), hbd = hb.to<double>();
    CHECK(rel_err(matmul(to_device(hd), to_device(hbd)), matmul(hd, hbd)) < 1e-12);
  }
  // gemm with alpha, beta into a strided (transposed) C
  auto ha = Tensor<float>::randn({8, 5}, rng), hb = Tensor<float>::randn({5, 6}, rng);
  auto hc = Tensor<float>::randn({6, 8}, rng);
  auto dc = to_device(hc);
  backend::gemm(cpu{}, detail::const_view(ha), detail::const_view(hb), backend::mat_view(hc.t()),
                2.f, 0.5f);
  backend::gemm(cuda{}, detail::const_view(to_device(ha)), detail::const_view(to_device(hb)),
                backend::mat_view(dc.t()), 2.f, 0.5f);
  CHECK(rel_err(dc, hc) < 1e-5);
  // TF32: tensor cores, ~1e-3
  cuda::set_tf32(true);
  auto hl = Tensor<float>::randn({256, 512}, rng), hr = Tensor<float>::randn({512, 128}, rng);
  const double e32 = rel_err(matmul(to_device(hl), to_device(hr)), matmul(hl, hr));
  cuda::set_tf32(false);
  INFO("tf32 relative error " << e32);
  CHECK(e32 < 5e-3);
  CHECK_THROWS_AS(matmul(to_device(hl), to_device(hl)), ShapeError);
}
