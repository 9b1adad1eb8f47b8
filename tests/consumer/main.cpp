// Uses the installed package: a gradient through a small expression, and the bundled
// corpus through the installed data directory (which also links the codecs).
#include <ternary/data/corpus.hpp>
#include <ternary/ternary.hpp>

#include <cstdio>

int main() {
  using namespace ternary;
  auto x = Var<float>::parameter(Tensor<float>::from({3}, {1, 2, 3}));
  auto loss = sum(x * x);
  loss.backward();  // d/dx sum(x^2) = 2x
  const auto g = x.grad().to_vector();
  const bool grad_ok = g[0] == 2 && g[1] == 4 && g[2] == 6;
  const TextSplit text = load_default_corpus();
  const bool corpus_ok = text.train.size() > 1000000 && !text.val.empty();
  std::printf("consumer: grad = [%g, %g, %g] %s; corpus %s: %zu bytes %s\n", g[0], g[1], g[2],
              grad_ok ? "ok" : "WRONG", default_corpus_path().c_str(),
              text.train.size() + text.val.size(), corpus_ok ? "ok" : "WRONG");
  return grad_ok && corpus_ok ? 0 : 1;
}
