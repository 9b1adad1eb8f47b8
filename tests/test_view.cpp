// Differentiable views and concat: values and gradients.
#include <catch2/catch.hpp>

#include "ternary/ternary.hpp"

using namespace ternary;

namespace {
void require_gradcheck(const std::function<Var<double>(std::vector<Var<double>>&)>& f,
                       const std::vector<Tensor<double>>& in) {
  auto r = gradcheck(f, in);
  INFO(r.report);
  REQUIRE(r.ok);
}
}  // namespace

TEST_CASE("view op gradients", "[ops][view]") {
  Rng rng(21);
  auto x = Tensor<double>::randn({2, 3, 4}, rng);
  auto w = Tensor<double>::randn({4, 6}, rng);
  // each view is followed by a non-linear op so the gradient depends on the layout
  require_gradcheck([](auto& v) { return square(reshape(v[0], {6, 4})); }, {x});
  require_gradcheck([](auto& v) { return square(transpose(v[0], 0, 2)) * 2.0; }, {x});
  require_gradcheck([](auto& v) { return matmul(permute(v[0], {1, 0, 2}), v[1]); }, {x, w});
  require_gradcheck([](auto& v) { return square(slice(v[0], 2, 1, 4, 2)); }, {x});
  require_gradcheck([](auto& v) { return square(narrow(v[0], 1, 1, 2)); }, {x});
  require_gradcheck([](auto& v) { return square(select(v[0], 0, 1)); }, {x});
  require_gradcheck([](auto& v) { return square(squeeze(unsqueeze(v[0], 1), 1)); }, {x});
  require_gradcheck([](auto& v) { return square(expand(v[0], {3, 2, 3, 4})); }, {x});
}

TEST_CASE("concat values and gradients", "[ops][view]") {
  auto a = Tensor<float>::from({1, 2}, {1, 2});
  auto b = Tensor<float>::from({2, 2}, {3, 4, 5, 6});
  auto c = concat(std::vector<Tensor<float>>{a, b}, 0);
  CHECK(c.to_vector() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK_THROWS_AS(concat(std::vector<Tensor<float>>{a, b}, 1), ShapeError);
  Rng rng(22);
  require_gradcheck(
      [](auto& v) {
        return square(concat(std::vector<Var<double>>{v[0], v[1], v[0]}, 1));
      },
      {Tensor<double>::randn({2, 3}, rng), Tensor<double>::randn({2, 1}, rng)});
  // only the second input requires grad: concat must still be recorded
  auto k = Var<double>::constant(Tensor<double>::ones({2}));
  auto p = Var<double>::parameter(Tensor<double>::ones({3}));
  sum(square(concat(std::vector<Var<double>>{k, p}, 0))).backward();
  CHECK(p.grad().to_vector() == std::vector<double>{2, 2, 2});
}

// A value's bf16 copy (Var::value_bf16, written by its producer: the CUDA attention's output)
// travels through reshape and permute with the view, so a reader behind them finds it.
TEST_CASE("reshape and permute carry a value's bf16 copy", "[ops][view]") {
  auto x = Var<float>::parameter(Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6}));
  CHECK_FALSE(x.value_bf16().defined());
  CHECK_THROWS_AS(x.set_value_bf16(Tensor<bf16>::zeros({3, 2})), AutogradError);
  x.set_value_bf16(backend::to_bf16(cpu{}, x.value()));
  auto y = permute(reshape(x, {3, 2}), {1, 0});
  REQUIRE(y.value_bf16().defined());
  CHECK(y.value_bf16().shape() == y.shape());
  CHECK(y.value_bf16().to<float>().to_vector() == y.value().contiguous().to_vector());
  CHECK_FALSE(square(x).value_bf16().defined());  // other ops make new values
}

// A sub-block view's backward adds into that block of the gradient so far: in place once the
// parameter owns a gradient (several selects of one parameter, and a second backward pass).
TEST_CASE("select and narrow gradients accumulate into the gradient so far", "[ops][view]") {
  auto x = Var<float>::parameter(Tensor<float>::zeros({3, 2}));
  auto loss = [&] {
    return sum(select(x, 0, 0) * 2.0f) + sum(select(x, 0, 2) * 3.0f) + sum(select(x, 0, 0)) +
           sum(narrow(x, 0, 1, 2));
  };
  loss().backward();
  CHECK(x.grad().to_vector() == std::vector<float>{3, 3, 1, 1, 4, 4});
  loss().backward();  // accumulates
  CHECK(x.grad().to_vector() == std::vector<float>{6, 6, 2, 2, 8, 8});
}
