// BitLinear basics: a ternary layer's forward and backward, the trits and scale its weights
// become, the straight-through gradient, and the packed inference form.
// Run: ./build/examples/bitlinear_basics
#include <cstdio>
#include <iostream>

#include <ternary/bitlinear.hpp>

using namespace ternary;

int main() {
  Rng rng(0);
  // y = int8(rms_norm(x) * g) . ternary(W)^T, with W [out = 4, in = 8] latent weights.
  nn::BitLinear<float> layer(8, 4, rng);
  auto x = Var<float>::constant(Tensor<float>::randn({2, 8}, rng));  // 2 tokens
  auto y = layer.forward(x);
  std::cout << "y = BitLinear(x):\n" << y.value() << "\n\n";

  // The weights the forward pass used: trits in {-1, 0, 1} times one absmean scale.
  auto q = layer.ternary_weights();
  std::printf("scale s = mean|W| = %.4f; trits of row 0:", q.scales[0]);
  for (int k = 0; k < 8; ++k) std::printf(" %+d", q.trits[k]);
  std::printf("\n");

  // The gradient passes straight through the quantizer to the latent weights.
  sum(y).backward();
  std::cout << "\ndL/dW (straight through to the latent weights), row 0:\n"
            << layer.weight().grad().select(0, 0) << "\n\n";

  // Export: the same trits packed 5 per byte (base 3), with the scale alongside; unpacking
  // gives back exactly the weight the forward pass used.
  auto packed_w = quant::pack(q, TritEncoding::base3);
  std::printf(
      "base-3 packed: %zu bytes of trits + %zu scale(s) for %lld weights; exact: %s\n",
      packed_w.data.size(), packed_w.scales.size(), (long long)layer.weight().numel(),
      max_abs_diff(quant::unpack(packed_w).dequantize(), layer.quantized_weight().value()) == 0
          ? "yes"
          : "no");

  // Inference: 2 bits per weight and int8 activations, integer dot products.
  nn::PackedBitLinear packed(layer);
  auto y_packed = packed.forward(x.value());
  std::printf("packed layer: %lld bytes for %lld weights; max |y_packed - y| = %.2e\n",
              (long long)packed.packed_bytes(), (long long)layer.weight().numel(),
              max_abs_diff(y_packed, y.value()));

  // Gradual quantization: lambda = 0 is full precision, 1 is ternary.
  layer.set_lambda(0.0);
  auto y_fp = layer.forward(x);
  std::printf("lambda 0 vs 1: max |y_fp - y| = %.3f (quantization changes the output)\n",
              max_abs_diff(y_fp.value(), y.value()));
  return 0;
}
