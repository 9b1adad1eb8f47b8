// Linear, RMSNorm and BitLinear modules: gradients, the lambda end points, freezing, and
// the packed integer inference path.
#include <catch2/catch.hpp>

#include "ternary/bitlinear.hpp"

using namespace ternary;
using Catch::Matchers::Contains;

TEST_CASE("RMSNorm and Linear modules: gradchecks through the modules", "[nn]") {
  Rng rng(1);
  nn::RMSNorm<double> norm(4);
  Var<double> gain = norm.gain();
  gain.value().assign(Tensor<double>::randn({4}, rng));
  nn::Linear<double> lin(4, 3, rng, true);
  auto r = gradcheck([&](std::vector<Var<double>>& in) { return lin.forward(norm.forward(in[0])); },
                     {Tensor<double>::randn({2, 5, 4}, rng)});
  INFO(r.report);
  CHECK(r.ok);
  auto names = lin.named_parameters();
  REQUIRE(names.size() == 2);
  CHECK(names[0].first == "weight");
  CHECK(names[1].first == "bias");
  CHECK_THROWS_AS(nn::Linear<double>(0, 3, rng), ShapeError);
}

TEST_CASE("BitLinear with quantization off: gradcheck, and parameter gradients", "[nn][bitlinear]") {
  Rng rng(3);
  nn::BitLinear<double> layer(4, 3, rng);
  layer.set_lambda(0.0);  // no weight or activation quantization; the extra norm stays
  Var<double> gain = layer.norm()->gain();
  gain.value().assign(Tensor<double>::rand({4}, rng, 0.5, 1.5));
  auto r = gradcheck([&](std::vector<Var<double>>& in) { return layer.forward(in[0]); },
                     {Tensor<double>::randn({2, 4}, rng)});
  INFO(r.report);
  CHECK(r.ok);
  // The weight and gain gradients equal those of the same math written with plain ops.
  layer.zero_grad();
  auto x = Var<double>::constant(Tensor<double>::randn({2, 4}, rng));
  sum(square(layer.forward(x))).backward();
  const auto dw = layer.weight().grad().clone(), dg = gain.grad().clone();
  layer.zero_grad();
  sum(square(linear(rms_norm(x, gain), layer.weight()))).backward();
  CHECK(max_abs_diff(dw, layer.weight().grad()) < 1e-12);
  CHECK(max_abs_diff(dg, gain.grad()) < 1e-12);
}

TEST_CASE("lambda = 0 equals Linear exactly, lambda = 1 equals plain BitLinear", "[nn][bitlinear]") {
  Rng rng(7);
  nn::BitLinearConfig no_norm;
  no_norm.extra_norm = false;
  nn::BitLinear<float> bl(8, 5, rng, no_norm);
  Rng rng2(7);
  nn::Linear<float> lin(8, 5, rng2);  // same seed, same init
  REQUIRE(max_abs_diff(bl.weight().value(), lin.weight().value()) == 0.0);
  auto x = Var<float>::constant(Tensor<float>::randn({3, 8}, rng));
  bl.set_lambda(0.0);
  CHECK(max_abs_diff(bl.forward(x).value(), lin.forward(x).value()) == 0.0);
  bl.set_lambda(1.0);
  auto wq = quant::quantize_absmean(bl.weight().value()).dequantize();
  auto xq = quant::fake_quantize_int8(x.value());
  CHECK(max_abs_diff(bl.forward(x).value(), matmul(xq, wq.t())) == 0.0);
  CHECK_THROWS_AS(bl.set_lambda(1.5), Error);
  CHECK_THROWS_WITH(bl.forward(Var<float>::constant(Tensor<float>::zeros({2, 7}))), Contains("[5, 8]"));
}

TEST_CASE("BitLinear trains its latent weights and its extra-norm gain", "[nn][bitlinear]") {
  Rng rng(8);
  nn::BitLinear<float> layer(16, 4, rng);
  auto names = layer.named_parameters();
  REQUIRE(names.size() == 2);
  CHECK(names[1].first == "norm.weight");
  auto x = Var<float>::constant(Tensor<float>::randn({5, 16}, rng));
  sum(square(layer.forward(x))).backward();
  CHECK(layer.weight().grad().defined());
  CHECK(layer.norm()->gain().grad().defined());
}

TEST_CASE("freeze uses the given trits and scales exactly", "[nn][bitlinear]") {
  Rng rng(9);
  nn::BitLinear<float> a(8, 4, rng), b(8, 4, rng);
  b.freeze(a.ternary_weights());
  Var<float> gb = b.norm()->gain();
  gb.value().assign(a.norm()->gain().value());
  auto x = Var<float>::constant(Tensor<float>::randn({3, 8}, rng));
  CHECK(max_abs_diff(a.forward(x).value(), b.forward(x).value()) == 0.0);
  quant::TernaryWeights wrong = a.ternary_weights();
  wrong.shape = Shape{2, 16};
  CHECK_THROWS_AS(b.freeze(wrong), ShapeError);
}

TEST_CASE("packed int8 x trit inference matches the training forward", "[nn][bitlinear][inference]") {
  Rng rng(10);
  for (auto gran : {quant::Granularity::per_tensor, quant::Granularity::per_row, quant::Granularity::per_group}) {
    nn::BitLinearConfig c;
    c.weight.granularity = gran;
    c.weight.group_size = 16;
    nn::BitLinear<float> layer(64, 33, rng, c);
    nn::PackedBitLinear packed(layer);
    auto x = Tensor<float>::randn({2, 5, 64}, rng);
    auto train_y = layer.forward(Var<float>::constant(x)).value();
    auto infer_y = packed.forward(x);
    REQUIRE(infer_y.shape() == Shape{2, 5, 33});
    double scale = 0;
    for (float v : train_y.to_vector()) scale = std::max(scale, double(std::abs(v)));
    CHECK(max_abs_diff(infer_y, train_y) <= 1e-5 * scale);
    CHECK(packed.packed_bytes() < 64 * 33);  // well under a byte per weight
  }
}
