// Autodiff basics: from a scalar derivative to tensors, what the tape records, and how
// gradcheck verifies a backward rule. Run: ./build/examples/autodiff_basics
#include <cstdio>
#include <iostream>

#include "ternary/ternary.hpp"

using namespace ternary;

int main() {
  // 1. A scalar. f(x) = x^2 + 3x, so f'(x) = 2x + 3 = 7 at x = 2.
  auto x = Var<double>::parameter(Tensor<double>::scalar(2.0));
  auto f = x * x + x * 3.0;
  f.backward();
  std::printf("1. f(2) = %g, f'(2) = %g (expected 7)\n", f.item(), x.grad().item());

  // 2. Tensors and broadcasting. y = sum(tanh(W x + b)); b is broadcast over the batch,
  //    so its gradient is summed over the batch.
  Rng rng(0);
  auto W = Var<double>::parameter(Tensor<double>::randn({3, 4}, rng));
  auto b = Var<double>::parameter(Tensor<double>::zeros({3}));
  auto batch = Var<double>::constant(Tensor<double>::randn({5, 4}, rng));  // 5 inputs of size 4
  auto h = tanh(linear(batch, W) + b);                                     // [5, 3]

  // 3. The tape: each differentiable op run so far, in order.
  std::printf("2. the tape holds %zu ops:", Tape::current().size());
  for (const auto& entry : Tape::current().entries()) std::printf(" %s", entry.op);
  std::printf("\n");
  auto loss = sum(h);
  loss.backward();  // walks the tape once, newest op first, then clears it
  std::cout << "   dloss/db (summed over the batch of 5):\n" << b.grad() << "\n";
  std::printf("   after backward the tape holds %zu ops\n", Tape::current().size());

  // 4. No tape under NoGrad (evaluation, optimizer updates).
  {
    NoGrad no_grad;
    auto y = tanh(linear(batch, W));
    std::printf("3. under NoGrad: requires_grad = %d, tape size = %zu\n", y.requires_grad(),
                Tape::current().size());
  }

  // 5. gradcheck compares the tape's gradient with central finite differences (in double).
  auto check =
      gradcheck([](std::vector<Var<double>>& in) { return sigmoid(matmul(in[0], in[1])) * in[2]; },
                {Tensor<double>::randn({2, 3}, rng), Tensor<double>::randn({3, 4}, rng),
                 Tensor<double>::randn({4}, rng)});
  std::printf("4. %s\n", check.report.c_str());
  return check.ok ? 0 : 1;
}
