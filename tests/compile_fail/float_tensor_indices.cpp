// Must not compile: element access with floating-point indices.
#include "ternary/ternary.hpp"
int main() {
  auto t = ternary::Tensor<float>::ones({2, 2});
  return int(t(0.5, 1));
}
