// Must not compile: a Tensor of a type the library has no kernels or file dtype for.
#include "ternary/ternary.hpp"
int main() {
  ternary::Tensor<long double> t;
  return t.defined();
}
