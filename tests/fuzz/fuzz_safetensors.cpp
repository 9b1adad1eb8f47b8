// libFuzzer target: load_safetensors on arbitrary bytes. Valid files must round-trip.
#include "fuzz_input.hpp"
#include "ternary/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ternary::fuzz::write_input(data, size, ".safetensors");
  ternary::Safetensors st;
  try {
    st = ternary::load_safetensors(path);
  } catch (const ternary::Error&) {
    return 0;  // rejected with a clear error: fine
  }
  // Accepted: re-encoding and decoding again must give the same tensors.
  const auto bytes = ternary::encode_safetensors(st.tensors, st.metadata);
  ternary::Safetensors st2 = ternary::decode_safetensors(bytes, "re-encoded");
  if (st2.tensors.size() != st.tensors.size() || st2.metadata != st.metadata) std::abort();
  for (auto& [name, blob] : st.tensors) {
    const auto& b2 = st2.tensors.at(name);
    if (b2.dtype != blob.dtype || !(b2.shape == blob.shape) || b2.bytes != blob.bytes) std::abort();
  }
  return 0;
}
