// Helpers the test files share: scratch directories, tiny GPT configs, random token ids.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "ternary/core/random.hpp"
#include "ternary/core/tensor.hpp"
#include "ternary/nn/gpt.hpp"

namespace ternary::test {

// A fresh directory under $TMPDIR (or /tmp), removed at the end of the test.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag = "test") {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ternary_" + tag + "_XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path + "/" + name; }
};

// A GPT small enough for gradient checks: 3 blocks (odd: 1 encoder, 2 decoder, 1 skip),
// dim 16, 4 heads over 2 kv heads, vocabulary 32.
inline nn::GPTConfig tiny_gpt_config(bool ternary, uint64_t seed) {
  nn::GPTConfig c;
  c.vocab_size = 32;
  c.n_layers = 3;
  c.dim = 16;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.mlp_mult = 2;
  c.ternary = ternary;
  c.seed = seed;
  return c;
}

inline Tensor<int32_t> random_ids(int64_t B, int64_t T, int64_t V, Rng& rng) {
  auto t = Tensor<int32_t>::empty({B, T});
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = int32_t(rng.below(V));
  return t;
}

inline std::vector<uint16_t> random_tokens(size_t n, int64_t V, Rng& rng) {
  std::vector<uint16_t> t(n);
  for (auto& x : t) x = uint16_t(rng.below(V));
  return t;
}

}  // namespace ternary::test
