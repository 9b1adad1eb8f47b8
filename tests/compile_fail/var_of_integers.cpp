// Must not compile: a Var (which carries a gradient) over integers.
#include "ternary/ternary.hpp"
int main() {
  ternary::Var<int32_t> ids(ternary::Tensor<int32_t>::zeros({4}));
  return int(ids.numel());
}
