// libFuzzer target: read_shard (Parameter Golf token shards) on arbitrary bytes, then the
// batcher's token-id check against a vocabulary of 1024, as train_gpt uses them.
#include "fuzz_input.hpp"
#include "ternary/data/batcher.hpp"
#include "ternary/data/shards.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ternary::fuzz::write_input(data, size, ".bin");
  try {
    const std::vector<uint16_t> tokens = ternary::read_shard(path, 1024);
    if (ternary::kShardHeaderBytes + 2 * tokens.size() != size) std::abort();
    ternary::RandomBatcher batcher(tokens, 2, 8, 1, 1024);
    ternary::Batch b = batcher.next();
    for (int64_t i = 0; i < b.inputs.numel(); ++i)
      if (b.inputs.data()[i] < 0 || b.inputs.data()[i] >= 1024) std::abort();
  } catch (const ternary::Error&) {
  }
  return 0;
}
