// Byte-level text: every byte is a token (vocabulary 256, kByteVocab in batcher.hpp), so no
// tokenizer is needed and bits per byte is simply the mean cross-entropy in bits.
//
// read_text_bytes decompresses by file extension: ".zst" (zstd), ".xz" (xz), ".gz" (gzip),
// anything else is read as is.
//
// The split rule (split_text): with n bytes and val_fraction f, the validation set is the
// LAST floor(n * f) bytes and the training set is everything before them. The cut is at a
// byte, not at a line or character boundary. The same bytes and f always give the same
// split; no randomness is involved.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ternary/core/error.hpp"
#include "ternary/io/compress.hpp"
#include "ternary/io/file.hpp"

namespace ternary {

inline constexpr double kDefaultValFraction = 0.05;

// The file's bytes, decompressed if its name ends in .zst, .xz or .gz.
inline std::vector<uint8_t> read_text_bytes(const std::string& path) {
  auto ends_with = [&](std::string_view ext) { return std::string_view(path).ends_with(ext); };
  Codec codec = ends_with(".zst")  ? Codec::zstd
                : ends_with(".xz") ? Codec::lzma
                : ends_with(".gz") ? Codec::zlib
                                   : Codec::none;
  std::vector<uint8_t> raw = read_file(path);
  if (codec == Codec::none) return raw;
  try {
    return decompress(raw, codec);
  } catch (const IOError& e) {
    throw IOError(detail::cat("read_text_bytes: ", path, ": ", e.what()));
  }
}

struct TextSplit {
  std::vector<uint8_t> train, val;
};

// Number of validation bytes for n bytes: floor(n * val_fraction).
inline size_t val_size(size_t n, double val_fraction) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    throw Error(detail::cat("split_text: val_fraction must be in [0, 1), got ", val_fraction));
  return static_cast<size_t>(std::floor(static_cast<double>(n) * val_fraction));
}

// Train = the first n - floor(n * val_fraction) bytes, val = the rest (see the header comment).
inline TextSplit split_text(std::span<const uint8_t> bytes,
                            double val_fraction = kDefaultValFraction) {
  const size_t n_val = val_size(bytes.size(), val_fraction), n_train = bytes.size() - n_val;
  return {{bytes.begin(), bytes.begin() + n_train}, {bytes.begin() + n_train, bytes.end()}};
}

// read_text_bytes + split_text.
inline TextSplit load_text(const std::string& path, double val_fraction = kDefaultValFraction) {
  std::vector<uint8_t> bytes = read_text_bytes(path);
  if (bytes.empty()) throw IOError(detail::cat("load_text: ", path, ": the text is empty"));
  return split_text(bytes, val_fraction);
}

}  // namespace ternary
