// embedding: row gather for ids of any shape and layout, scatter-add backward with
// repeated ids (serial and column-split threaded paths), gradchecks, out-of-range errors.
#include <catch2/catch.hpp>
#include <vector>

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/embedding.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("embedding gathers rows", "[embedding]") {
  auto table = Tensor<float>::arange(12).reshape({4, 3});  // row v = [3v, 3v+1, 3v+2]
  auto ids = Tensor<int32_t>::from({2, 2}, {3, 0, 1, 3});
  auto y = embedding(table, ids);
  REQUIRE(y.shape() == Shape{2, 2, 3});
  const int32_t expect_ids[] = {3, 0, 1, 3};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) CHECK(y(i / 2, i % 2, j) == float(3 * expect_ids[i] + j));
  // 0-d ids give one row; transposed ids and a transposed table are read through the view.
  CHECK(embedding(table, Tensor<int32_t>::scalar(2)).to_vector() == std::vector<float>{6, 7, 8});
  auto yt = embedding(table, ids.t());
  CHECK(yt[0][1].to_vector() == std::vector<float>{3, 4, 5});  // ids.t()(0, 1) = ids(1, 0) = 1
  auto tt = Tensor<float>::arange(12).reshape({3, 4}).t();     // [4, 3], row v = [v, v+4, v+8]
  CHECK(embedding(tt, Tensor<int32_t>::from({1}, {2})).to_vector() == std::vector<float>{2, 6, 10});
  // Var forward equals the tensor op.
  auto v = Var<float>::parameter(table);
  CHECK(max_abs_diff(embedding(v, ids).value(), y) == 0);
}

TEST_CASE("embedding backward scatter-adds repeated ids", "[embedding][grad]") {
  auto table = Var<double>::parameter(Tensor<double>::zeros({5, 2}));
  auto ids = Tensor<int32_t>::from({2, 3}, {1, 4, 1, 1, 0, 4});
  auto w = Tensor<double>::from({2, 3, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  sum(embedding(table, ids) * Var<double>::constant(w)).backward();
  // row 1 gets w[0,0] + w[0,2] + w[1,0]; row 4 gets w[0,1] + w[1,2]; row 0 gets w[1,1]; 2, 3: 0.
  auto expect =
      Tensor<double>::from({5, 2}, {9, 10, 1 + 5 + 7, 2 + 6 + 8, 0, 0, 0, 0, 3 + 11, 4 + 12});
  CHECK(max_abs_diff(table.grad(), expect) == 0);
}

TEST_CASE("embedding backward on the threaded path matches a serial reference",
          "[embedding][grad]") {
  Rng rng(6);
  const int64_t V = 50, D = 200, N = 3000;  // 4 column blocks of 64, N * D above the threshold
  std::vector<int32_t> idv(N);
  for (auto& i : idv) i = int32_t(rng.uniform(0, V)) % int32_t(V);
  auto ids = Tensor<int32_t>::from({30, 100}, idv);
  auto table = Var<float>::parameter(Tensor<float>::randn({V, D}, rng));
  auto w = Tensor<float>::randn({30, 100, D}, rng);
  sum(embedding(table, ids) * Var<float>::constant(w)).backward();
  std::vector<double> ref(V * D, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < D; ++j) ref[idv[i] * D + j] += w.data()[i * D + j];
  double worst = 0;
  for (int64_t k = 0; k < V * D; ++k)
    worst = std::max(worst, std::abs(ref[k] - table.grad().data()[k]));
  CHECK(worst < 1e-3);  // float sums of ~60 terms of size ~1
  // The gathered values, too.
  auto y = embedding(table.value(), ids);
  CHECK(y[29][99].to_vector() == table.value()[idv[N - 1]].to_vector());
}

TEST_CASE("embedding gradchecks", "[embedding][grad]") {
  Rng rng(12);
  auto ids = Tensor<int32_t>::from({2, 3}, {0, 2, 2, 3, 0, 0});
  std::vector<Tensor<double>> tables = {
      Tensor<double>::randn({4, 5}, rng),
      Tensor<double>::randn({5, 4}, rng).t(),                  // transposed table
      Tensor<double>::randn({4, 10}, rng).slice(1, 1, 10, 2),  // strided columns
  };
  for (const auto& t : tables) {
    auto r = gradcheck([&](std::vector<Var<double>>& in) { return embedding(in[0], ids); }, {t});
    INFO("table " << t.shape() << "\n" << r.report);
    CHECK(r.ok);
    // Non-contiguous ids, and the output fed into another op.
    auto r2 = gradcheck(
        [&](std::vector<Var<double>>& in) { return tanh(embedding(in[0], ids.t())); }, {t});
    INFO(r2.report);
    CHECK(r2.ok);
  }
}

TEST_CASE("embedding errors name the op, the id and its position", "[embedding][errors]") {
  auto table = Var<float>::parameter(Tensor<float>::zeros({8, 2}));
  try {
    embedding(table, Tensor<int32_t>::from({2, 3}, {0, 1, 2, 3, 8, 0}));
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(), Contains("embedding") && Contains("id 8") && Contains("[1, 1]") &&
                             Contains("8 rows"));
  }
  try {
    embedding(table.value(), Tensor<int32_t>::from({3}, {0, -1, 99}));
    FAIL("expected IndexError");
  } catch (const IndexError& e) {
    CHECK_THAT(e.what(), Contains("embedding") && Contains("id -1") && Contains("[1]"));
  }
  CHECK_THROWS_AS(embedding(Tensor<float>::zeros({8}), Tensor<int32_t>::from({1}, {0})),
                  ShapeError);
  // An error leaves nothing on the tape and no gradient behind.
  CHECK(Tape::current().size() == 0);
}
