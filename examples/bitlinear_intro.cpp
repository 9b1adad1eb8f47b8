// BitLinear intro: fit a small linear regression with a ternary layer and watch its weights
// settle into {-1, 0, +1} (times one scale) while the loss falls.
//   teacher:  y = x A^T, A [4, 32] full precision
//   student:  BitLinear(32, 4): extra RMSNorm -> int8 activations -> ternary weights
// The optimizer updates the latent full-precision weights; the forward pass only ever sees
// their ternary image, and the straight-through estimator carries the gradient back.
// Run: ./build/examples/bitlinear_intro
#include <cstdio>

#include <ternary/bitlinear.hpp>
#include <ternary/optim/adamw.hpp>

using namespace ternary;

static void print_histogram(const char* when, const quant::TernaryWeights& q) {
  int count[3] = {0, 0, 0};
  for (int8_t t : q.trits) ++count[t + 1];
  std::printf("%-6s trits: -1 x %3d | 0 x %3d | +1 x %3d   scale %.4f\n", when, count[0], count[1],
              count[2], q.scales[0]);
}

int main() {
  Rng rng(0);
  const int64_t in = 32, out = 4, batch = 64;
  auto A = Tensor<float>::randn({out, in}, rng);

  nn::BitLinear<float> layer(in, out, rng);
  optim::AdamW<float> opt(layer.parameters(), {.lr = 1e-2, .weight_decay = 0});
  print_histogram("start", layer.ternary_weights());

  for (int step = 0; step <= 400; ++step) {
    auto x = Tensor<float>::randn({batch, in}, rng);
    auto target = Var<float>::constant(matmul(x, A.t()));
    auto loss = mean(square(layer.forward(Var<float>::constant(x)) - target));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 50 == 0) std::printf("step %3d  loss %.4f\n", step, loss.value().item());
  }
  print_histogram("end", layer.ternary_weights());
  // For comparison: the loss of A's own ternary image (absmean of A), E|x (A - q(A))^T|^2.
  // A ternary layer cannot reach 0 loss; training the latent weights gets near (or below) this.
  auto qa = quant::quantize_absmean(A).dequantize();
  const Tensor<float> err2 = square(A - qa);
  const double floor = sum(err2).item() / double(out);
  std::printf("loss of absmean-ternary(A) itself: %.4f (the target's variance is %lld)\n", floor,
              (long long)in);
  return 0;
}
