// libFuzzer target: read_artifact + load_gpt_artifact on arbitrary bytes.
//
// The artifact's payload is CRC-checked, so random bytes rarely get past the header. The first
// input byte picks a mode: even = the rest is the file as is; odd = the rest is a payload
// (JSON length, JSON, tensor data) that the target wraps in a valid header with a correct
// CRC, which lets the fuzzer reach the JSON and tensor parsing and the model rebuild.

#include "fuzz_input.hpp"
#include "ternary/io/gpt_artifact.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> file;
  if (data[0] % 2 == 0) {
    file.assign(data + 1, data + size);
  } else {
    const std::span<const uint8_t> payload(data + 1, size - 1);
    file = ternary::detail::artifact_file(payload, payload, ternary::Codec::none);
  }
  const std::string path = ternary::fuzz::write_input(file.data(), file.size(), ".artifact");
  try {
    ternary::read_artifact(path);
    auto model = ternary::load_gpt_artifact(path);
    if (!model) std::abort();
  } catch (const ternary::Error&) {
  }
  return 0;
}
