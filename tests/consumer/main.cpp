// Uses the installed headers: a gradient through a small expression.
#include <ternary/ternary.hpp>

#include <cstdio>

int main() {
  using namespace ternary;
  auto x = Var<float>::parameter(Tensor<float>::from({3}, {1, 2, 3}));
  auto loss = sum(x * x);
  loss.backward();  // d/dx sum(x^2) = 2x
  const auto g = x.grad().to_vector();
  const bool ok = g[0] == 2 && g[1] == 4 && g[2] == 6;
  std::printf("consumer: grad = [%g, %g, %g] %s\n", g[0], g[1], g[2], ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
