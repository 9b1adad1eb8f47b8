// The artifact: the whole model in one compressed file, the thing Parameter Golf measures
// (its byte count plus the code's must stay under 16,000,000) and scores after reloading.
//
// File layout (all integers little-endian):
//   0   8 bytes  magic "TRNRYART"
//   8   u32      format version (1)
//   12  u32      codec of the payload (0 none, 1 zlib, 2 zstd, 3 lzma/xz)
//   16  u64      payload bytes, uncompressed
//   24  u64      payload bytes, compressed (= file size - 40)
//   32  u32      CRC-32 of the uncompressed payload
//   36  u32      0 (reserved)
//   40  ...      the compressed payload
// Payload: u64 n, then n bytes of JSON
//   {"format": "ternary-artifact", "version": 1, "metadata": {string: string},
//    "tensors": [{"name", "shape", "encoding", "offset", "bytes", "scales", "group"}]}
// then the tensor sections; each "offset" counts from the end of the JSON. Encodings:
//   trits_base3  f32 scales[scales] then the trits packed 5 per byte (quant/packing.hpp);
//                element i uses scale i / group (group = elements per scale)
//   int8_row     f32 scales[rows] then int8 values; row r = scales[r] * q (rows = shape[0])
//   fp16         IEEE half values
//   f32          float values
// Ternary tensors are stored exactly as the forward pass used them (trits and scales), so a
// reloaded ternary model computes what the trained one did.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "ternary/core/dtype.hpp"
#include "ternary/core/tensor.hpp"
#include "ternary/io/compress.hpp"
#include "ternary/io/file.hpp"
#include "ternary/quant/packing.hpp"

namespace ternary {

inline constexpr char kArtifactMagic[8] = {'T', 'R', 'N', 'R', 'Y', 'A', 'R', 'T'};
inline constexpr uint32_t kArtifactVersion = 1;
inline constexpr uint64_t kArtifactHeaderBytes = 40;
inline constexpr int64_t kParameterGolfBudget = 16'000'000;

enum class FloatEncoding { int8_row, fp16, f32 };

// A tensor as read back from an artifact.
struct ArtifactTensor {
  std::string encoding;
  Shape shape;
  Tensor<float> values;       // dequantized values (every encoding)
  std::vector<int8_t> trits;  // trits_base3 only
  std::vector<float> scales;  // trits_base3 and int8_row
  int64_t group = 0;          // trits_base3: elements per scale
};

struct Artifact {
  std::map<std::string, std::string> metadata;
  std::map<std::string, ArtifactTensor> tensors;
  const ArtifactTensor& at(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw IOError(detail::cat("artifact: no tensor named '", name, "'"));
    return it->second;
  }
};

namespace detail {
template <class X>
void append_pod(std::vector<uint8_t>& out, const X* p, size_t n) {
  const auto* b = reinterpret_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n * sizeof(X));
}
inline uint32_t crc32_of(std::span<const uint8_t> bytes) {
  uLong c = crc32(0L, Z_NULL, 0);
  size_t at = 0;
  while (at < bytes.size()) {  // zlib's length is a uInt: feed large buffers in pieces
    const uInt n = static_cast<uInt>(std::min<size_t>(bytes.size() - at, 1u << 30));
    c = crc32(c, bytes.data() + at, n);
    at += n;
  }
  return static_cast<uint32_t>(c);
}
}  // namespace detail

// Collects tensors, then writes the artifact.
namespace detail {
// The file: the 40-byte header (magic, version, codec, uncompressed and compressed sizes,
// CRC-32 of the uncompressed payload, 4 zero bytes), then the compressed payload.
inline std::vector<uint8_t> artifact_file(std::span<const uint8_t> raw,
                                          std::span<const uint8_t> packed, Codec codec) {
  std::vector<uint8_t> file(kArtifactHeaderBytes);
  std::memcpy(file.data(), kArtifactMagic, 8);
  const uint32_t version = kArtifactVersion, codec_id = uint32_t(codec), crc = crc32_of(raw),
                 zero = 0;
  const uint64_t raw_n = raw.size(), packed_n = packed.size();
  std::memcpy(file.data() + 8, &version, 4);
  std::memcpy(file.data() + 12, &codec_id, 4);
  std::memcpy(file.data() + 16, &raw_n, 8);
  std::memcpy(file.data() + 24, &packed_n, 8);
  std::memcpy(file.data() + 32, &crc, 4);
  std::memcpy(file.data() + 36, &zero, 4);
  file.insert(file.end(), packed.begin(), packed.end());
  return file;
}
}  // namespace detail

class ArtifactWriter {
 public:
  // A ternary tensor: trits in {-1, 0, 1} (row-major, numel(shape) of them) and one scale per
  // `group` consecutive elements.
  void add_ternary(const std::string& name, const Shape& shape, std::span<const int8_t> trits,
                   std::span<const float> scales, int64_t group) {
    const int64_t n = numel(shape);
    if (int64_t(trits.size()) != n)
      throw ShapeError(
          detail::cat("artifact: '", name, "': ", trits.size(), " trits for shape ", shape));
    if (group <= 0 || n % group != 0 || int64_t(scales.size()) != n / group)
      throw ShapeError(detail::cat("artifact: '", name, "': ", scales.size(), " scales of group ",
                                   group, " do not cover shape ", shape));
    std::vector<uint8_t> sec;
    detail::append_pod(sec, scales.data(), scales.size());
    auto packed = pack_trits_base3(trits);
    sec.insert(sec.end(), packed.begin(), packed.end());
    add_section(name, shape, "trits_base3", std::move(sec), int64_t(scales.size()), group);
  }
  // A float tensor, quantized or converted by `enc` (int8_row needs at least one axis).
  void add_float(const std::string& name, const Tensor<float>& t, FloatEncoding enc) {
    const Tensor<float> c = t.contiguous();
    const int64_t n = c.numel();
    std::vector<uint8_t> sec;
    if (enc == FloatEncoding::int8_row && c.dim() >= 1 && n > 0) {
      const int64_t rows = c.size(0), cols = n / rows;
      std::vector<float> scales(rows);
      std::vector<int8_t> q(n);
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = c.data() + r * cols;
        float m = 0;
        for (int64_t j = 0; j < cols; ++j) m = std::max(m, std::abs(x[j]));
        scales[r] = m > 0 ? m / 127.0f : 1.0f;
        for (int64_t j = 0; j < cols; ++j)
          q[r * cols + j] = int8_t(std::clamp(std::nearbyint(x[j] / scales[r]), -127.0f, 127.0f));
      }
      detail::append_pod(sec, scales.data(), scales.size());
      detail::append_pod(sec, q.data(), q.size());
      add_section(name, c.shape(), "int8_row", std::move(sec), rows, 0);
    } else if (enc == FloatEncoding::fp16) {
      std::vector<uint16_t> h(n);
      for (int64_t i = 0; i < n; ++i) h[i] = f16(c.data()[i]).bits;
      detail::append_pod(sec, h.data(), h.size());
      add_section(name, c.shape(), "fp16", std::move(sec), 0, 0);
    } else {
      detail::append_pod(sec, c.data(), size_t(n));
      add_section(name, c.shape(), "f32", std::move(sec), 0, 0);
    }
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // The uncompressed payload (JSON + sections).
  std::vector<uint8_t> payload() const {
    nlohmann::json j;
    j["format"] = "ternary-artifact";
    j["version"] = kArtifactVersion;
    j["metadata"] = metadata_;
    j["tensors"] = entries_;
    const std::string js = j.dump();
    std::vector<uint8_t> out;
    const uint64_t n = js.size();
    detail::append_pod(out, &n, 1);
    out.insert(out.end(), js.begin(), js.end());
    out.insert(out.end(), data_.begin(), data_.end());
    return out;
  }
  // Compresses and writes the file atomically; returns its size in bytes.
  int64_t write(const std::string& path, Codec codec,
                std::optional<int> level = std::nullopt) const {
    const auto raw = payload();
    const auto file = detail::artifact_file(raw, compress(raw, codec, level), codec);
    write_file_atomic(path, file);
    return int64_t(file.size());
  }

 private:
  void add_section(const std::string& name, const Shape& shape, const char* enc,
                   std::vector<uint8_t> sec, int64_t scales, int64_t group) {
    for (const auto& e : entries_)
      if (e["name"] == name) throw Error(detail::cat("artifact: tensor '", name, "' added twice"));
    entries_.push_back({{"name", name},
                        {"shape", shape.vec()},
                        {"encoding", enc},
                        {"offset", data_.size()},
                        {"bytes", sec.size()},
                        {"scales", scales},
                        {"group", group}});
    data_.insert(data_.end(), sec.begin(), sec.end());
  }
  std::vector<nlohmann::json> entries_;
  std::vector<uint8_t> data_;
  std::map<std::string, std::string> metadata_;
};

// Reads and validates an artifact: every size, offset and count is checked before use, and
// the payload's CRC must match. Errors name the file, the field and the byte offset.
inline Artifact read_artifact(const std::string& path) {
  const std::vector<uint8_t> file = read_file(path);
  auto fail = [&](const auto&... parts) {
    return IOError(detail::cat("artifact ", path, ": ", parts...));
  };
  if (file.size() < kArtifactHeaderBytes)
    throw fail("file is ", file.size(), " bytes, shorter than the ", kArtifactHeaderBytes,
               "-byte header");
  if (std::memcmp(file.data(), kArtifactMagic, 8) != 0)
    throw fail("bad magic at offset 0 (not a ternary artifact)");
  uint32_t version, codec_id, crc;
  uint64_t raw_n, packed_n;
  std::memcpy(&version, file.data() + 8, 4);
  std::memcpy(&codec_id, file.data() + 12, 4);
  std::memcpy(&raw_n, file.data() + 16, 8);
  std::memcpy(&packed_n, file.data() + 24, 8);
  std::memcpy(&crc, file.data() + 32, 4);
  if (version != kArtifactVersion)
    throw fail("format version ", version, " at offset 8 (this reader knows ", kArtifactVersion,
               ")");
  if (codec_id > uint32_t(Codec::lzma)) throw fail("unknown codec ", codec_id, " at offset 12");
  if (packed_n != file.size() - kArtifactHeaderBytes)
    throw fail("compressed size field (offset 24) says ", packed_n, " bytes but ",
               file.size() - kArtifactHeaderBytes, " follow the header");
  if (raw_n > (uint64_t(1) << 36))
    throw fail("uncompressed size field (offset 16) is implausible: ", raw_n);
  std::vector<uint8_t> raw;
  try {
    raw = decompress(std::span(file).subspan(kArtifactHeaderBytes), Codec(codec_id), raw_n);
  } catch (const IOError& e) {
    throw fail("payload at offset 40 does not decompress: ", e.what());
  }
  if (raw.size() != raw_n)
    throw fail("payload decompressed to ", raw.size(), " bytes, header (offset 16) says ", raw_n);
  if (detail::crc32_of(raw) != crc)
    throw fail("CRC-32 mismatch (offset 32): the payload is corrupt");
  if (raw.size() < 8) throw fail("payload too short for its JSON length");
  uint64_t jn;
  std::memcpy(&jn, raw.data(), 8);
  if (jn > raw.size() - 8)
    throw fail("JSON length ", jn, " exceeds the payload (", raw.size() - 8, " bytes)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(raw.begin() + 8, raw.begin() + 8 + int64_t(jn));
  } catch (const std::exception& e) {
    throw fail("payload JSON does not parse: ", e.what());
  }
  const uint8_t* data = raw.data() + 8 + jn;
  const uint64_t data_n = raw.size() - 8 - jn;
  // Sizes and offsets must be JSON integers: a float such as 1e300 must not reach an integer
  // conversion (undefined behaviour).
  auto count = [&](const nlohmann::json& e, const char* key) -> uint64_t {
    const auto& v = e.at(key);
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
      throw fail("field '", key, "' must be a non-negative integer, got ", v.dump());
    return v.get<uint64_t>();
  };
  Artifact a;
  try {
    if (j.at("format") != "ternary-artifact")
      throw fail("payload JSON 'format' is not ternary-artifact");
    a.metadata = j.at("metadata").get<std::map<std::string, std::string>>();
    for (const auto& e : j.at("tensors")) {
      ArtifactTensor t;
      const std::string name = e.at("name");
      t.encoding = e.at("encoding");
      const auto& shape = e.at("shape");
      if (!shape.is_array() || shape.size() > 8)
        throw fail("tensor '", name, "': 'shape' must be an array of at most 8 extents");
      uint64_t elements = 1;
      for (const auto& d : shape) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > (int64_t(1) << 32))
          throw fail("tensor '", name, "': bad extent ", d.dump());
        t.shape.push_back(d.get<int64_t>());
        elements *= d.get<uint64_t>();
        if (elements > raw_n * 8 + 64)  // a section holds at least one byte per 5 values
          throw fail("tensor '", name, "': shape ", t.shape, " has more elements than the ", raw_n,
                     "-byte payload can hold");
      }
      const uint64_t off = count(e, "offset"), len = count(e, "bytes");
      if (off > data_n || len > data_n - off)
        throw fail("tensor '", name, "': section [", off, ", ", off + len, ") is outside the ",
                   data_n, "-byte data area");
      const uint8_t* p = data + off;
      const int64_t n = numel(t.shape);
      t.values = Tensor<float>::empty(t.shape);
      float* v = t.values.data();
      auto need = [&](uint64_t bytes) {
        if (len != bytes)
          throw fail("tensor '", name, "' (", t.encoding, ", shape ", t.shape, "): section is ",
                     len, " bytes, expected ", bytes);
      };
      if (t.encoding == "trits_base3") {
        const int64_t ns = int64_t(std::min<uint64_t>(count(e, "scales"), INT64_MAX));
        const int64_t group = int64_t(std::min<uint64_t>(count(e, "group"), INT64_MAX));
        if (group <= 0 || n % group != 0 || ns != n / group)
          throw fail("tensor '", name, "': ", ns, " scales of group ", group, " for shape ",
                     t.shape);
        need(uint64_t(ns) * 4 + uint64_t((n + 4) / 5));
        t.scales.resize(ns);
        std::memcpy(t.scales.data(), p, ns * 4);
        t.trits = unpack_trits_base3(std::span(p + ns * 4, size_t((n + 4) / 5)), n);
        t.group = group;
        for (int64_t i = 0; i < n; ++i) v[i] = t.scales[i / group] * float(t.trits[i]);
      } else if (t.encoding == "int8_row") {
        if (t.shape.size() < 1 || t.shape[0] == 0)
          throw fail("tensor '", name, "': int8_row needs a non-empty first axis");
        const int64_t rows = t.shape[0], cols = n / rows;
        need(uint64_t(rows) * 4 + uint64_t(n));
        t.scales.resize(rows);
        std::memcpy(t.scales.data(), p, rows * 4);
        const auto* q = reinterpret_cast<const int8_t*>(p + rows * 4);
        for (int64_t i = 0; i < n; ++i) v[i] = t.scales[i / cols] * float(q[i]);
      } else if (t.encoding == "fp16") {
        need(uint64_t(n) * 2);
        for (int64_t i = 0; i < n; ++i) {
          f16 h;
          std::memcpy(&h.bits, p + 2 * i, 2);
          v[i] = float(h);
        }
      } else if (t.encoding == "f32") {
        need(uint64_t(n) * 4);
        std::memcpy(v, p, n * 4);
      } else {
        throw fail("tensor '", name, "': unknown encoding '", t.encoding, "'");
      }
      if (!a.tensors.emplace(name, std::move(t)).second)
        throw fail("tensor '", name, "' appears twice");
    }
  } catch (const nlohmann::json::exception& e) {
    throw fail("payload JSON is missing a field or has a wrong type: ", e.what());
  }
  return a;
}

}  // namespace ternary
