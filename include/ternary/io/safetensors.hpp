// safetensors checkpoints (the format of huggingface/safetensors, loadable by PyTorch):
//
//   bytes [0, 8)       N, the header length, little-endian uint64
//   bytes [8, 8+N)     a JSON object: for each tensor
//                        "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}
//                      and optionally "__metadata__": {"key": "value", ...} (strings only)
//   bytes [8+N, end)   the data area; a tensor's bytes are [8+N+b, 8+N+e), little-endian,
//                      row-major, and e - b = numel * dtype size.
//
// Supported dtypes: F32 F64 BF16 I8 U8 I32 I64 U16. Tensors are held as TensorBlob (dtype,
// shape, raw bytes) so one map can hold any mix; blob.as<float>() gives a Tensor and throws
// if the dtype differs.
//
// save_safetensors writes tensors in name order, pads the header with spaces to a multiple of
// 8 bytes (as the reference writer does) and replaces the file atomically. load_safetensors
// checks everything a corrupt or hostile file could get wrong: header length vs file size,
// JSON syntax, field types, dtype names, every data_offsets pair inside the data area and
// matching dtype * shape. Tensors may overlap or come in any order (the format allows it);
// out of bounds never passes. Errors are IOError naming the file, the tensor, the field and
// the byte offset in the file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ternary/core/dtype.hpp"
#include "ternary/core/error.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/tensor.hpp"
#include "ternary/io/file.hpp"

namespace ternary {

// The reference implementation refuses headers over 100 MB; so do we (it bounds allocation).
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

constexpr std::string_view safetensors_dtype_name(DType d) {
  switch (d) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::bf16:
      return "BF16";
    case DType::i8:
      return "I8";
    case DType::u8:
      return "U8";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u16:
      return "U16";
  }
  return "?";
}

inline std::optional<DType> safetensors_dtype_from_name(std::string_view s) {
  for (DType d : {DType::f32, DType::f64, DType::bf16, DType::i8, DType::u8, DType::i32, DType::i64,
                  DType::u16})
    if (safetensors_dtype_name(d) == s) return d;
  return std::nullopt;
}

// One tensor of any supported dtype: dtype, shape and numel * dtype_size raw bytes.
struct TensorBlob {
  DType dtype = DType::f32;
  Shape shape;
  std::vector<uint8_t> bytes;

  TensorBlob() = default;
  TensorBlob(DType d, Shape s, std::vector<uint8_t> b) : dtype(d), shape(s), bytes(std::move(b)) {
    if (bytes.size() != static_cast<uint64_t>(ternary::numel(shape)) * dtype_size(dtype))
      throw ShapeError(detail::cat("TensorBlob: ", bytes.size(), " bytes for ",
                                   safetensors_dtype_name(dtype), " shape ", shape, " (needs ",
                                   ternary::numel(shape) * dtype_size(dtype), ")"));
  }

  // A copy of a tensor's elements (any strides) in row-major order.
  template <class T, class B>
  static TensorBlob from(const Tensor<T, B>& t) {
    if constexpr (!B::on_host)  // device memory: copy through the host
      return from(to_backend<cpu>(t));
    TensorBlob blob;
    blob.dtype = dtype_of<T>();
    blob.shape = t.shape();
    blob.bytes.resize(static_cast<size_t>(t.numel()) * sizeof(T));
    T* out = reinterpret_cast<T*>(blob.bytes.data());
    if (t.is_contiguous()) {
      if (t.numel()) std::memcpy(out, t.data(), blob.bytes.size());
    } else {  // walk the index space like an odometer
      const int nd = t.dim();
      std::vector<int64_t> idx(nd, 0);
      for (int64_t i = 0; i < t.numel(); ++i) {
        int64_t off = 0;
        for (int d = 0; d < nd; ++d) off += idx[d] * t.strides()[d];
        out[i] = t.data()[off];
        for (int d = nd - 1; d >= 0 && ++idx[d] == t.shape()[d]; --d) idx[d] = 0;
      }
    }
    return blob;
  }

  // The data as a new contiguous Tensor<T>; throws IOError unless dtype is T's dtype.
  template <class T>
  Tensor<T> as() const {
    if (dtype != dtype_of<T>())
      throw IOError(detail::cat("TensorBlob::as: the tensor is ", safetensors_dtype_name(dtype),
                                ", not ", safetensors_dtype_name(dtype_of<T>())));
    auto t = Tensor<T>::empty(shape);
    if (!bytes.empty()) std::memcpy(t.data(), bytes.data(), bytes.size());
    return t;
  }

  int64_t numel() const { return ternary::numel(shape); }
};

struct Safetensors {
  std::map<std::string, TensorBlob> tensors;
  std::map<std::string, std::string> metadata;
};

namespace detail {

// One tensor's header entry after validation.
struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // within the data area
};

// Parses and validates the JSON header. `data_start` = 8 + N is the data area's file offset
// and `data_size` its length.
inline std::vector<SafetensorsEntry> parse_safetensors_header(
    std::string_view header, uint64_t data_start, uint64_t data_size, const std::string& file,
    std::map<std::string, std::string>& metadata) {
  auto fail = [&](const auto&... parts) -> IOError {
    return IOError(cat("load_safetensors: ", file, ": ", parts...));
  };
  if (header.empty() || header.front() != '{')
    throw fail("header (byte offset 8) does not start with '{'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::parse_error& e) {
    throw fail("header JSON is invalid near file byte offset ", 8 + (e.byte ? e.byte - 1 : 0), ": ",
               e.what());
  }
  if (!j.is_object()) throw fail("header JSON (byte offset 8) is not an object");

  std::vector<SafetensorsEntry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("field __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw fail("field __metadata__: value of '", m.key(), "' is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const char* field, const auto&... why) -> IOError {
      return fail("tensor '", name, "': field ", field, ": ", why...);
    };
    if (!v.is_object()) throw fail("tensor '", name, "': entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string())
      throw bad("dtype", "missing or not a string");
    auto dtype = safetensors_dtype_from_name(v["dtype"].get<std::string>());
    if (!dtype)
      throw bad("dtype", "unsupported dtype '", v["dtype"].get<std::string>(),
                "' (supported: F32 F64 BF16 I8 U8 I32 I64 U16)");
    if (!v.contains("shape") || !v["shape"].is_array())
      throw bad("shape", "missing or not an array");
    if (v["shape"].size() > static_cast<size_t>(kMaxDims))
      throw bad("shape", "rank ", v["shape"].size(), " exceeds the maximum of ", kMaxDims);
    Shape shape;
    uint64_t nbytes = dtype_size(*dtype), nonzero_elements = 1;
    bool overflow = false;
    for (const auto& e : v["shape"]) {
      if (!e.is_number_unsigned() || e.get<uint64_t>() > uint64_t(INT64_MAX))
        throw bad("shape", "extent ", e.dump(), " is not a non-negative integer");
      uint64_t x = e.get<uint64_t>();
      overflow |= __builtin_mul_overflow(nbytes, x, &nbytes);
      // Extents beside a zero would pass the byte count; their product must still fit an
      // int64 element count.
      if (x != 0)
        overflow |= __builtin_mul_overflow(nonzero_elements, x, &nonzero_elements) ||
                    nonzero_elements > uint64_t(INT64_MAX);
      shape.push_back(static_cast<int64_t>(x));
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      throw bad("data_offsets", "missing or not a pair of non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e)
      throw bad("data_offsets", "begin ", b, " is after end ", e, " (file byte offsets ",
                data_start + b, " > ", data_start + e, ")");
    if (e > data_size)
      throw bad("data_offsets", "end ", e, " (file byte offset ", data_start + e,
                ") is past the end of the data area (", data_size, " bytes, file ends at ",
                data_start + data_size, ")");
    if (overflow || e - b != nbytes)
      throw bad("data_offsets", "[", b, ", ", e, "] (file byte offset ", data_start + b, ") holds ",
                e - b, " bytes but ", v["dtype"].get<std::string>(), " shape ", shape, " needs ",
                overflow ? std::string("more than 2^64") : std::to_string(nbytes));
    entries.push_back({name, *dtype, shape, b, e});
  }
  // Like the reference implementation, the data area must end where the last tensor ends:
  // bytes past it mean a corrupt header or a file with something appended.
  uint64_t last_end = 0;
  for (const auto& en : entries) last_end = std::max(last_end, en.end);
  if (last_end != data_size)
    throw fail("the data area (file byte offset ", data_start, ") is ", data_size,
               " bytes but its tensors end at ", last_end, ": ", data_size - last_end,
               " unexpected bytes from file byte offset ", data_start + last_end);
  return entries;
}

// Validates the 8-byte length against the file size; returns N.
inline uint64_t check_header_length(uint64_t n, uint64_t file_size, const std::string& file) {
  if (n > kSafetensorsMaxHeader)
    throw IOError(cat("load_safetensors: ", file, ": header length ", n,
                      " (byte offset 0) exceeds the limit of ", kSafetensorsMaxHeader, " bytes"));
  if (n > file_size - 8)
    throw IOError(cat("load_safetensors: ", file, ": header length ", n,
                      " (byte offset 0) runs past the end of the file (", file_size, " bytes)"));
  if (n < 2)
    throw IOError(cat("load_safetensors: ", file, ": header length ", n,
                      " (byte offset 0) is too small for a JSON object"));
  return n;
}

inline void check_min_size(uint64_t size, const std::string& file) {
  if (size < 8)
    throw IOError(cat("load_safetensors: ", file, ": file is ", size,
                      " bytes, shorter than the 8-byte header length"));
}

}  // namespace detail

// The bytes of a safetensors file.
inline std::vector<uint8_t> encode_safetensors(
    const std::map<std::string, TensorBlob>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  // Insertion-ordered JSON, laid out as the reference writer does: __metadata__ first, then
  // each tensor's dtype, shape, data_offsets.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, blob] : tensors) {
    if (name == "__metadata__" || name.empty())
      throw IOError(detail::cat("save_safetensors: invalid tensor name '", name, "'"));
    const uint64_t need = static_cast<uint64_t>(blob.numel()) * dtype_size(blob.dtype);
    if (blob.bytes.size() != need)
      throw IOError(detail::cat("save_safetensors: tensor '", name, "' has ", blob.bytes.size(),
                                " bytes, its shape ", blob.shape, " needs ", need));
    j[name] = {{"dtype", safetensors_dtype_name(blob.dtype)},
               {"shape", blob.shape.vec()},
               {"data_offsets", {offset, offset + need}}};
    offset += need;
  }
  std::string header;
  try {
    header = j.dump();
  } catch (const nlohmann::ordered_json::exception& e) {  // e.g. a name that is not UTF-8
    throw IOError(detail::cat("save_safetensors: cannot encode the header: ", e.what()));
  }
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  std::vector<uint8_t> out(8 + n + offset);
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), n);
  uint8_t* data = out.data() + 8 + n;
  for (const auto& [name, blob] : tensors) {
    if (!blob.bytes.empty()) std::memcpy(data, blob.bytes.data(), blob.bytes.size());
    data += blob.bytes.size();
  }
  return out;
}

// Parses safetensors bytes; `name` is used in error messages.
inline Safetensors decode_safetensors(std::span<const uint8_t> bytes,
                                      const std::string& name = "<memory>") {
  detail::check_min_size(bytes.size(), name);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  detail::check_header_length(n, bytes.size(), name);
  Safetensors st;
  std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), n);
  auto entries =
      detail::parse_safetensors_header(header, 8 + n, bytes.size() - 8 - n, name, st.metadata);
  const uint8_t* data = bytes.data() + 8 + n;
  for (auto& e : entries)
    st.tensors[e.name] =
        TensorBlob(e.dtype, e.shape, std::vector<uint8_t>(data + e.begin, data + e.end));
  return st;
}

// Reads and validates a safetensors file (tensor bytes are read straight into their blobs).
inline Safetensors load_safetensors(const std::string& path) {
  InputFile f(path);
  detail::check_min_size(f.size(), path);
  uint64_t n;
  f.read_at(0, &n, 8);
  detail::check_header_length(n, f.size(), path);
  std::string header(n, '\0');
  f.read_at(8, header.data(), n);
  Safetensors st;
  auto entries =
      detail::parse_safetensors_header(header, 8 + n, f.size() - 8 - n, path, st.metadata);
  for (auto& e : entries) {
    std::vector<uint8_t> b(e.end - e.begin);
    if (!b.empty()) f.read_at(8 + n + e.begin, b.data(), b.size());
    st.tensors[e.name] = TensorBlob(e.dtype, e.shape, std::move(b));
  }
  return st;
}

// Writes a safetensors file atomically (temp file + fsync + rename).
inline void save_safetensors(const std::string& path,
                             const std::map<std::string, TensorBlob>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  write_file_atomic(path, encode_safetensors(tensors, metadata));
}

}  // namespace ternary
