// Must not compile: float + double in one expression (no silent conversion).
#include "ternary/ternary.hpp"
int main() {
  auto a = ternary::Tensor<float>::ones({2});
  auto b = ternary::Tensor<double>::ones({2});
  ternary::Tensor<float> c = a + b;
  return int(c.numel());
}
