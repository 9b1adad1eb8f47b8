// libFuzzer target: read_text_bytes + the train/validation split on arbitrary bytes, as
// plain text and as each compressed format (.zst, .xz, .gz: the first input byte picks one).
#include "fuzz_input.hpp"
#include "ternary/data/text.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* suffixes[] = {".txt", ".zst", ".xz", ".gz"};
  const std::string path = ternary::fuzz::write_input(data + 1, size - 1, suffixes[data[0] % 4]);
  try {
    std::vector<uint8_t> bytes = ternary::read_text_bytes(path);
    if (data[0] % 4 == 0 && bytes.size() != size - 1) std::abort();
    ternary::TextSplit s = ternary::load_text(path, 0.1);
    if (s.train.size() + s.val.size() != bytes.size()) std::abort();
  } catch (const ternary::Error&) {
  }
  return 0;
}
