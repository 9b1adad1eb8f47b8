// Linear, RMSNorm and BitLinear modules: gradients, the lambda end points, freezing, and
// the packed integer inference path.
#include <catch2/catch.hpp>

#include <array>
#include <memory>

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

TEST_CASE("BitLinear with quantization off: gradcheck, and parameter gradients",
          "[nn][bitlinear]") {
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

TEST_CASE("lambda = 0 equals Linear exactly, lambda = 1 equals plain BitLinear",
          "[nn][bitlinear]") {
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
  CHECK_THROWS_WITH(bl.forward(Var<float>::constant(Tensor<float>::zeros({2, 7}))),
                    Contains("[5, 8]"));
}

TEST_CASE("BitLinear::forward_fused(h, relu2) is forward(relu2(h)), values and gradients",
          "[nn][bitlinear]") {
  Rng rng(17);
  nn::BitLinear<float> bl(16, 6, rng);
  bl.norm()->gain().value().assign(Tensor<float>::randn({16}, rng, 1, 0.3));
  const auto hv = Tensor<float>::randn({2, 5, 16}, rng);
  auto h1 = Var<float>::parameter(hv.clone()), h2 = Var<float>::parameter(hv.clone());
  auto y1 = bl.forward_fused(h1, true);
  CHECK(max_abs_diff(y1.value(), bl.forward(relu2(h2)).value()) == 0.0);
  // gradients of the input, the gain and the latent weight, one graph at a time
  const auto r = Tensor<float>::randn({2, 5, 6}, rng);
  sum(y1 * Var<float>::constant(r)).backward();
  const auto g_gain = bl.norm()->gain().grad().clone(), g_w = bl.weight().grad().clone();
  bl.zero_grad();
  sum(bl.forward(relu2(h2)) * Var<float>::constant(r)).backward();
  CHECK(max_abs_diff(h1.grad(), h2.grad()) < 1e-6);
  CHECK(max_abs_diff(bl.norm()->gain().grad(), g_gain) < 1e-6);
  CHECK(max_abs_diff(bl.weight().grad(), g_w) < 1e-6);
  CHECK(max_abs_diff(h1.grad(), Tensor<float>::zeros(hv.shape())) > 0);  // not vacuous
  CHECK_THROWS_WITH(bl.forward_fused(Var<float>::constant(Tensor<float>::zeros({2, 7})), true),
                    Contains("[6, 16]"));
  CHECK_THROWS_WITH(quant::rms_norm_linear<1>(h1, {bl.norm()->gain()}, {bl.weight()}, 1e-6, 1e-6,
                                              true, /*relu2_input=*/true),
                    Contains("exclude each other"));
}

TEST_CASE("rms_norm_bitlinear_mlp is the fc and projection rms_norm_linear calls composed",
          "[nn][bitlinear]") {
  Rng rng(18);
  nn::BitLinear<float> fc(16, 24, rng), proj(24, 16, rng);
  fc.norm()->gain().value().assign(Tensor<float>::randn({16}, rng, 1, 0.3));
  proj.norm()->gain().value().assign(Tensor<float>::randn({24}, rng, 1, 0.3));
  const auto xv = Tensor<float>::randn({2, 5, 16}, rng), r = Tensor<float>::randn({2, 5, 16}, rng);
  const auto resv = Tensor<float>::randn({2, 5, 16}, rng);
  const auto bv = Tensor<float>::randn({16}, rng, 1, 0.5);
  // the two forms, each with its own leaves: equal values and gradients
  std::array<Tensor<float>, 2> gx, gres, gb, gfc_gain, gproj_gain, gw_fc, gw_proj, y;
  for (int form = 0; form < 2; ++form) {
    auto x = Var<float>::parameter(xv.clone()), res = Var<float>::parameter(resv.clone());
    auto b = Var<float>::parameter(bv.clone());
    const Residual<float, cpu> rr{res, b};
    fc.zero_grad();
    proj.zero_grad();
    Var<float> out;
    if (form == 0) {
      out = quant::rms_norm_bitlinear_mlp(x, 1e-6, fc.norm()->gain(), fc.quantized_weight(),
                                          fc.norm()->eps(), proj.norm()->gain(),
                                          proj.quantized_weight(), proj.norm()->eps(), &rr);
    } else {
      const auto h = quant::rms_norm_linear<1>(x, {fc.norm()->gain()}, {fc.quantized_weight()},
                                               fc.norm()->eps(), 1e-6, true)[0];
      out = proj.forward_fused(h, true, &rr);
    }
    y[form] = out.value().clone();
    sum(out * Var<float>::constant(r)).backward();
    gx[form] = x.grad().clone();
    gres[form] = res.grad().clone();
    gb[form] = b.grad().clone();
    gfc_gain[form] = fc.norm()->gain().grad().clone();
    gproj_gain[form] = proj.norm()->gain().grad().clone();
    gw_fc[form] = fc.weight().grad().clone();
    gw_proj[form] = proj.weight().grad().clone();
  }
  CHECK(max_abs_diff(y[0], y[1]) == 0.0);
  for (const auto* g : {&gx, &gres, &gb, &gfc_gain, &gproj_gain, &gw_fc, &gw_proj})
    CHECK(max_abs_diff((*g)[0], (*g)[1]) == 0.0);
  CHECK(max_abs_diff(gw_fc[0], Tensor<float>::zeros(gw_fc[0].shape())) > 0);  // not vacuous
  auto x = Var<float>::parameter(xv.clone());
  CHECK_THROWS_WITH(
      quant::rms_norm_bitlinear_mlp(x, 1e-6, fc.norm()->gain(), fc.quantized_weight(), 1e-6,
                                    proj.norm()->gain(), fc.quantized_weight(), 1e-6),
      Contains("do not chain"));
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

TEST_CASE("packed int8 x trit inference matches the training forward",
          "[nn][bitlinear][inference]") {
  Rng rng(10);
  for (auto gran : {quant::Granularity::per_tensor, quant::Granularity::per_row,
                    quant::Granularity::per_group}) {
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

TEST_CASE("BitLinear with quantization off: gradcheck on 3-D and non-contiguous inputs",
          "[nn][bitlinear]") {
  Rng rng(11);
  for (bool extra_norm : {true, false}) {
    nn::BitLinearConfig c;
    c.extra_norm = extra_norm;
    c.act_quant = false;
    nn::BitLinear<double> layer(5, 3, rng, c);
    layer.set_lambda(0.0);
    // a transposed [2, 4, 5] view: x.transpose(0, 1) of a [4, 2, 5] tensor, and a sliced one
    auto base = Tensor<double>::randn({4, 2, 5}, rng);
    auto r = gradcheck(
        [&](std::vector<Var<double>>& in) { return layer.forward(transpose(in[0], 0, 1)); },
        {base});
    INFO(r.report);
    CHECK(r.ok);
    auto wide = Tensor<double>::randn({3, 9}, rng);
    auto r2 = gradcheck(
        [&](std::vector<Var<double>>& in) { return layer.forward(slice(in[0], 1, 2, 7)); }, {wide});
    INFO(r2.report);
    CHECK(r2.ok);
    // and with respect to the layer's own parameters: central differences on each element
    auto x = Var<double>::constant(Tensor<double>::randn({3, 5}, rng));
    auto wout = Tensor<double>::randn({3, 3}, rng);
    auto loss = [&] { return sum(layer.forward(x) * Var<double>::constant(wout)); };
    layer.zero_grad();
    loss().backward();
    for (auto& [name, p] : layer.named_parameters()) {
      Tensor<double> v = p.value();
      for (int64_t i = 0; i < v.numel(); ++i) {
        NoGrad ng;
        const double saved = v.data()[i];
        v.data()[i] = saved + 1e-6;
        const double lp = loss().value().item();
        v.data()[i] = saved - 1e-6;
        const double lm = loss().value().item();
        v.data()[i] = saved;
        INFO(name << "[" << i << "]");
        CHECK(p.grad().data()[i] == Approx((lp - lm) / 2e-6).epsilon(1e-5).margin(1e-7));
      }
    }
  }
}

TEST_CASE("BitLinear at lambda in (0, 1) blends weights and activations", "[nn][bitlinear]") {
  Rng rng(12);
  nn::BitLinearConfig c;
  c.extra_norm = false;
  nn::BitLinear<float> bl(16, 6, rng, c);
  auto x = Tensor<float>::randn({4, 16}, rng);
  bl.set_lambda(0.3);
  const float l = 0.3f;
  auto w = bl.weight().value();
  Tensor<float> wb = w + (quant::quantize_absmean(w).dequantize() - w) * l;
  Tensor<float> xb = x + (quant::fake_quantize_int8(x) - x) * l;
  CHECK(max_abs_diff(bl.forward(Var<float>::constant(x)).value(), matmul(xb, wb.t())) < 1e-6);
  // the latent weight's gradient is that of the blend: straight through
  auto xv = Var<float>::constant(x);
  sum(bl.forward(xv)).backward();
  Tensor<float> expect = matmul(Tensor<float>::ones({6, 4}), xb);  // dL/dW = 1^T xb
  CHECK(max_abs_diff(bl.weight().grad(), expect) < 1e-5);
}

TEST_CASE("Linear init: PyTorch's uniform by default, normal with a given std", "[nn]") {
  Rng rng(13);
  nn::Linear<double> u(100, 200, rng, true);
  double lo = 1, hi = -1;
  for (double v : u.weight().value().to_vector()) lo = std::min(lo, v), hi = std::max(hi, v);
  CHECK(lo >= -0.1);
  CHECK(hi <= 0.1);
  CHECK(hi - lo > 0.19);  // fills +-1/sqrt(100)
  nn::LinearConfig c;
  c.bias = true;
  c.init_std = 0.02;
  nn::Linear<double> n(256, 256, rng, c);
  double ss = 0, mean = 0;
  for (double v : n.weight().value().to_vector()) ss += v * v, mean += v;
  CHECK(std::sqrt(ss / (256 * 256)) == Approx(0.02).epsilon(0.02));
  CHECK(mean / (256 * 256) == Approx(0).margin(2e-4));
  CHECK(max_abs_diff(n.bias().value(), Tensor<double>::zeros({256})) == 0.0);
  // BitLinear draws the same initial weight, so a config switch keeps the initialisation
  Rng r1(14), r2(14);
  nn::BitLinearConfig bc;
  bc.init_std = 0.02;
  nn::BitLinear<double> b(32, 8, r1, bc);
  nn::Linear<double> l(32, 8, r2, nn::LinearConfig{false, 0.02});
  CHECK(max_abs_diff(b.weight().value(), l.weight().value()) == 0.0);
  c.init_std = -1;
  CHECK_THROWS_WITH(nn::Linear<double>(4, 4, rng, c), Contains("init_std"));
}

TEST_CASE("freeze rejects inconsistent trits and scales", "[nn][bitlinear]") {
  Rng rng(15);
  nn::BitLinear<float> a(8, 4, rng);
  auto q = a.ternary_weights();
  q.trits[5] = 2;
  CHECK_THROWS_WITH(a.freeze(q), Contains("value 2 at position 5"));
  q = a.ternary_weights();
  q.scales.push_back(1.0f);
  CHECK_THROWS_WITH(a.freeze(q), Contains("2 scales"));
  CHECK_FALSE(a.frozen());
}

TEST_CASE("a QuEST BitLinear frozen to its exported weights computes the same", "[nn][quest]") {
  Rng rng(16);
  nn::BitLinearConfig c;
  c.weight.granularity = quant::Granularity::per_row;
  nn::BitLinear<float, cpu, quant::QuEST> a(32, 8, rng, c), b(32, 8, rng, c);
  b.freeze(quant::unpack(quant::pack(a.ternary_weights())));
  Var<float> gb = b.norm()->gain();
  gb.value().assign(a.norm()->gain().value());
  auto x = Var<float>::constant(Tensor<float>::randn({3, 32}, rng));
  CHECK(max_abs_diff(a.forward(x).value(), b.forward(x).value()) == 0.0);
  // it trains: the latent weight gets the trust-masked gradient
  sum(square(a.forward(x))).backward();
  CHECK(a.weight().grad().defined());
}

TEST_CASE("the lambda schedule drives BitLinear layers", "[nn][schedule]") {
  Rng rng(17);
  std::vector<std::unique_ptr<nn::BitLinear<float>>> layers;
  for (int i = 0; i < 2; ++i) layers.push_back(std::make_unique<nn::BitLinear<float>>(4, 4, rng));
  quant::LambdaSchedule s(2, 100);
  s.apply(layers, 25);
  CHECK(layers[0]->lambda() == Approx(0.5));
  CHECK(layers[1]->lambda() == 0.0);
  s.apply(layers, 100);
  CHECK(layers[1]->lambda() == 1.0);
}

TEST_CASE("packed inference without activation quantization", "[nn][bitlinear][inference]") {
  Rng rng(18);
  nn::BitLinearConfig c;
  c.act_quant = false;
  c.weight.granularity = quant::Granularity::per_row;
  nn::BitLinear<float> layer(24, 7, rng, c);
  nn::PackedBitLinear packed(layer);
  auto x = Tensor<float>::randn({5, 24}, rng);
  CHECK(max_abs_diff(packed.forward(x), layer.forward(Var<float>::constant(x)).value()) < 1e-5);
  CHECK(packed.packed_weight().encoding == TritEncoding::two_bit);
  CHECK(packed.packed_bytes() == (24 * 7 + 3) / 4 + 7 * 4);
  CHECK_THROWS_WITH(packed.forward(Tensor<float>::zeros({5, 23})), Contains("24 inputs"));
}
