// libFuzzer target: read_bytes_per_token (the tokenizer's byte-length table used to turn
// a loss into bits per byte) on arbitrary text, for a vocabulary of 8.
#include <cmath>

#include "fuzz_input.hpp"
#include "ternary/train/evaluate.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ternary::fuzz::write_input(data, size, ".txt");
  try {
    const std::vector<double> table = ternary::read_bytes_per_token(path, 8);
    if (table.size() != 8) std::abort();
    for (double v : table)
      if (!(v >= 0) || !std::isfinite(v)) std::abort();
  } catch (const ternary::Error&) {
  }
  return 0;
}
