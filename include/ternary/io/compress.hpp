// Whole-buffer compression with zlib, zstd and xz, behind one enum.
//
//   auto packed = compress(bytes, Codec::zstd, 19);
//   auto back = decompress(packed, Codec::zstd, bytes.size());   // 0 = size unknown
//
// Stream formats (each is what the matching command-line tool reads and writes):
//   zlib: compress writes a zlib stream (RFC 1950, Adler-32 checked); decompress also accepts gzip
//   (RFC 1952,
//         `gzip`, possibly several concatenated members), detected from the first bytes.
//   zstd: standard zstd frames (`zstd`) with the content size and a checksum (as the CLI
//         writes them); several concatenated frames decode as one.
//   lzma: the .xz container with LZMA2 and a CRC64 check (`xz`); chosen over raw LZMA2 because
//         it is self-describing and integrity-checked, and .xz text files decode with the same
//         call. Concatenated .xz streams are accepted.
//
// zlib is always available. zstd and lzma are compiled in when TERNARY_HAVE_ZSTD /
// TERNARY_HAVE_LZMA are nonzero (link -lzstd / -llzma). If the build does not define them,
// they default to whether <zstd.h> / <lzma.h> can be included; define them to 0 to build
// without a library. Asking for a codec that was not compiled in throws IOError.
//
// Every failure (corrupt or truncated input, output size different from the expected size,
// bad level, missing codec) throws IOError naming the codec.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ternary/core/error.hpp"

#ifndef TERNARY_HAVE_ZSTD
#if __has_include(<zstd.h>)
#define TERNARY_HAVE_ZSTD 1
#else
#define TERNARY_HAVE_ZSTD 0
#endif
#endif

#ifndef TERNARY_HAVE_LZMA
#if __has_include(<lzma.h>)
#define TERNARY_HAVE_LZMA 1
#else
#define TERNARY_HAVE_LZMA 0
#endif
#endif

#if TERNARY_HAVE_ZSTD
#include <zstd.h>
#endif
#if TERNARY_HAVE_LZMA
#include <lzma.h>
#endif

namespace ternary {

// The values are stored in files (io/artifact.hpp): never renumber them.
enum class Codec { none = 0, zlib = 1, zstd = 2, lzma = 3 };

constexpr std::string_view codec_name(Codec c) {
  switch (c) {
    case Codec::none:
      return "none";
    case Codec::zlib:
      return "zlib";
    case Codec::zstd:
      return "zstd";
    case Codec::lzma:
      return "lzma";
  }
  return "?";
}

// "none", "zlib", "zstd", "lzma" (or "xz"); throws IOError on anything else.
inline Codec codec_from_name(std::string_view name) {
  if (name == "none") return Codec::none;
  if (name == "zlib") return Codec::zlib;
  if (name == "zstd") return Codec::zstd;
  if (name == "lzma" || name == "xz") return Codec::lzma;
  throw IOError(detail::cat("codec_from_name: unknown codec '", name,
                            "' (expected none, zlib, zstd or lzma)"));
}

// Whether a codec was compiled in.
constexpr bool codec_available(Codec c) {
  switch (c) {
    case Codec::none:
    case Codec::zlib:
      return true;
    case Codec::zstd:
      return TERNARY_HAVE_ZSTD != 0;
    case Codec::lzma:
      return TERNARY_HAVE_LZMA != 0;
  }
  return false;
}

namespace detail {

inline void require_codec(Codec c, const char* op) {
  if (!codec_available(c))
    throw IOError(cat(op, ": codec ", codec_name(c),
                      " was not compiled in (build with TERNARY_HAVE_",
                      c == Codec::zstd ? "ZSTD" : "LZMA", "=1 and link -l",
                      c == Codec::zstd ? "zstd" : "lzma", ")"));
}

// The output buffer of a streaming decoder: grows by doubling as output arrives. When the
// size is known it never grows past expected + 1 bytes (one more, so that too much output is
// detected), and it starts small: memory follows the output actually decoded, so a hostile
// size field cannot make us allocate gigabytes up front.
class DecodeBuffer {
 public:
  DecodeBuffer(size_t input_size, size_t expected, Codec c) : expected_(expected), codec_(c) {
    const size_t start = std::max<size_t>(input_size * 4, 1 << 16);
    buf_.resize(expected ? std::min(expected + 1, start) : start);
  }
  // Room for more output at position `pos`, growing if full.
  void reserve_more(size_t pos) {
    if (pos < buf_.size()) return;
    if (expected_ && buf_.size() > expected_)
      throw IOError(cat("decompress(", codec_name(codec_), "): output exceeds the expected ",
                        expected_, " bytes"));
    buf_.resize(expected_ ? std::min(buf_.size() * 2, expected_ + 1) : buf_.size() * 2);
  }
  uint8_t* data() { return buf_.data(); }
  size_t size() const { return buf_.size(); }
  std::vector<uint8_t> finish(size_t pos) {
    if (expected_ && pos != expected_)
      throw IOError(
          cat("decompress(", codec_name(codec_), "): got ", pos, " bytes, expected ", expected_));
    buf_.resize(pos);
    buf_.shrink_to_fit();
    return std::move(buf_);
  }

 private:
  std::vector<uint8_t> buf_;
  size_t expected_;
  Codec codec_;
};

inline int resolve_level(Codec c, std::optional<int> level) {
  int lo = 0, hi = 9, def = 6;
#if TERNARY_HAVE_ZSTD
  if (c == Codec::zstd) lo = ZSTD_minCLevel(), hi = ZSTD_maxCLevel(), def = ZSTD_CLEVEL_DEFAULT;
#endif
  if (!level) return def;
  if (*level < lo || *level > hi)
    throw IOError(
        cat("compress(", codec_name(c), "): level ", *level, " is outside [", lo, ", ", hi, "]"));
  return *level;
}

constexpr size_t kZlibChunk = 1u << 30;  // zlib counts in 32-bit uInt: feed at most 1 GiB a call

inline std::vector<uint8_t> zlib_compress(std::span<const uint8_t> in, int level) {
  z_stream s{};
  if (deflateInit(&s, level) != Z_OK) throw IOError("compress(zlib): deflateInit failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&s, deflateEnd);
  std::vector<uint8_t> out(deflateBound(&s, static_cast<uLong>(in.size())));
  size_t in_pos = 0;
  for (;;) {
    size_t n_in = std::min(in.size() - in_pos, kZlibChunk);
    s.next_in = const_cast<Bytef*>(in.data() + in_pos);
    s.avail_in = static_cast<uInt>(n_in);
    if (s.total_out == out.size()) out.resize(out.size() * 2);
    s.next_out = out.data() + s.total_out;
    s.avail_out = static_cast<uInt>(std::min(out.size() - s.total_out, kZlibChunk));
    bool last = in_pos + n_in == in.size();
    int ret = deflate(&s, last ? Z_FINISH : Z_NO_FLUSH);
    in_pos += n_in - s.avail_in;
    if (ret == Z_STREAM_END) break;
    if (ret != Z_OK && ret != Z_BUF_ERROR)
      throw IOError(cat("compress(zlib): deflate failed: ", s.msg ? s.msg : "unknown error"));
  }
  out.resize(s.total_out);
  return out;
}

inline std::vector<uint8_t> zlib_decompress(std::span<const uint8_t> in, size_t expected) {
  z_stream s{};
  if (inflateInit2(&s, 15 + 32) != Z_OK)  // 15-bit window, +32: detect zlib or gzip header
    throw IOError("decompress(zlib): inflateInit failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&s, inflateEnd);
  DecodeBuffer out(in.size(), expected, Codec::zlib);
  size_t in_pos = 0, pos = 0;
  for (;;) {
    out.reserve_more(pos);
    s.next_in = const_cast<Bytef*>(in.data() + in_pos);
    s.avail_in = static_cast<uInt>(std::min(in.size() - in_pos, kZlibChunk));
    s.next_out = out.data() + pos;
    s.avail_out = static_cast<uInt>(std::min(out.size() - pos, kZlibChunk));
    const uInt avail_in = s.avail_in, avail_out = s.avail_out;
    int ret = inflate(&s, Z_NO_FLUSH);
    in_pos += avail_in - s.avail_in;
    pos += avail_out - s.avail_out;
    if (ret == Z_STREAM_END) {
      if (in_pos == in.size()) break;
      inflateReset(&s);  // another gzip member follows
      continue;
    }
    if (ret == Z_BUF_ERROR || (ret == Z_OK && in_pos == in.size() && s.avail_out > 0)) {
      if (in_pos == in.size())
        throw IOError(cat("decompress(zlib): truncated input (", in.size(),
                          " bytes consumed, stream not finished)"));
      continue;  // output was full: grow and go on
    }
    if (ret != Z_OK)
      throw IOError(cat("decompress(zlib): corrupt data at input byte ~", in_pos, ": ",
                        s.msg ? s.msg : "unknown error"));
  }
  return out.finish(pos);
}

#if TERNARY_HAVE_ZSTD
inline std::vector<uint8_t> zstd_compress(std::span<const uint8_t> in, int level) {
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> c(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!c) throw IOError("compress(zstd): cannot create a compression context");
  ZSTD_CCtx_setParameter(c.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(c.get(), ZSTD_c_checksumFlag, 1);  // 4 bytes buy corruption detection
  std::vector<uint8_t> out(ZSTD_compressBound(in.size()));
  size_t n = ZSTD_compress2(c.get(), out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n)) throw IOError(cat("compress(zstd): ", ZSTD_getErrorName(n)));
  out.resize(n);
  return out;
}

inline std::vector<uint8_t> zstd_decompress(std::span<const uint8_t> in, size_t expected) {
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> d(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!d) throw IOError("decompress(zstd): cannot create a decompression context");
  DecodeBuffer out(in.size(), expected, Codec::zstd);
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  size_t pos = 0, hint = 1;
  for (;;) {
    out.reserve_more(pos);
    ZSTD_outBuffer ob{out.data() + pos, out.size() - pos, 0};
    hint = ZSTD_decompressStream(d.get(), &ob, &ib);
    if (ZSTD_isError(hint))
      throw IOError(cat("decompress(zstd): corrupt data at input byte ~", ib.pos, ": ",
                        ZSTD_getErrorName(hint)));
    pos += ob.pos;
    // Stop when all input is consumed and either the last frame is complete and flushed
    // (hint 0; calling again would start a new frame) or the decoder wants more input.
    if (ib.pos == ib.size && (hint == 0 || ob.pos < ob.size)) break;
  }
  if (hint != 0)
    throw IOError(cat("decompress(zstd): truncated input (", in.size(),
                      " bytes consumed, frame not finished)"));
  return out.finish(pos);
}
#endif

#if TERNARY_HAVE_LZMA
inline const char* lzma_error_text(lzma_ret r) {
  switch (r) {
    case LZMA_MEM_ERROR:
      return "out of memory";
    case LZMA_FORMAT_ERROR:
      return "not an .xz stream (bad magic)";
    case LZMA_OPTIONS_ERROR:
      return "unsupported options";
    case LZMA_DATA_ERROR:
      return "corrupt data";
    case LZMA_BUF_ERROR:
      return "truncated input";
    case LZMA_UNSUPPORTED_CHECK:
      return "unsupported integrity check";
    default:
      return "internal error";
  }
}

inline std::vector<uint8_t> lzma_compress(std::span<const uint8_t> in, int level) {
  std::vector<uint8_t> out(lzma_stream_buffer_bound(in.size()));
  size_t n = 0;
  lzma_ret r = lzma_easy_buffer_encode(static_cast<uint32_t>(level), LZMA_CHECK_CRC64, nullptr,
                                       in.data(), in.size(), out.data(), &n, out.size());
  if (r != LZMA_OK) throw IOError(cat("compress(lzma): ", lzma_error_text(r)));
  out.resize(n);
  return out;
}

inline std::vector<uint8_t> lzma_decompress(std::span<const uint8_t> in, size_t expected) {
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_ret r = lzma_stream_decoder(&s, UINT64_MAX, LZMA_CONCATENATED);
  if (r != LZMA_OK) throw IOError(cat("decompress(lzma): ", lzma_error_text(r)));
  std::unique_ptr<lzma_stream, void (*)(lzma_stream*)> guard(&s, lzma_end);
  DecodeBuffer out(in.size(), expected, Codec::lzma);
  s.next_in = in.data();
  s.avail_in = in.size();
  for (;;) {
    const size_t pos = s.total_out;
    out.reserve_more(pos);
    s.next_out = out.data() + pos;
    s.avail_out = out.size() - pos;
    r = lzma_code(&s, s.avail_in == 0 ? LZMA_FINISH : LZMA_RUN);
    if (r == LZMA_STREAM_END) break;
    if (r != LZMA_OK)
      throw IOError(cat("decompress(lzma): ", lzma_error_text(r), " at input byte ~", s.total_in));
  }
  return out.finish(s.total_out);
}
#endif

}  // namespace detail

// Compresses `bytes`. `level` defaults to the codec's own default (zlib 6, zstd 3, lzma 6);
// valid ranges: zlib 0..9, zstd ZSTD_minCLevel()..22, lzma 0..9. Codec::none copies.
inline std::vector<uint8_t> compress(std::span<const uint8_t> bytes, Codec codec,
                                     std::optional<int> level = std::nullopt) {
  detail::require_codec(codec, "compress");
  const int lv = detail::resolve_level(codec, level);
  switch (codec) {
    case Codec::none:
      return {bytes.begin(), bytes.end()};
    case Codec::zlib:
      return detail::zlib_compress(bytes, lv);
#if TERNARY_HAVE_ZSTD
    case Codec::zstd:
      return detail::zstd_compress(bytes, lv);
#endif
#if TERNARY_HAVE_LZMA
    case Codec::lzma:
      return detail::lzma_compress(bytes, lv);
#endif
    default:
      break;
  }
  throw IOError("compress: unreachable codec");
}

// Decompresses `bytes`. If `expected_size` is nonzero the output must be exactly that long
// (and decoding stops as soon as it would be longer); 0 means unknown.
inline std::vector<uint8_t> decompress(std::span<const uint8_t> bytes, Codec codec,
                                       size_t expected_size = 0) {
  detail::require_codec(codec, "decompress");
  switch (codec) {
    case Codec::none:
      if (expected_size && bytes.size() != expected_size)
        throw IOError(detail::cat("decompress(none): got ", bytes.size(), " bytes, expected ",
                                  expected_size));
      return {bytes.begin(), bytes.end()};
    case Codec::zlib:
      return detail::zlib_decompress(bytes, expected_size);
#if TERNARY_HAVE_ZSTD
    case Codec::zstd:
      return detail::zstd_decompress(bytes, expected_size);
#endif
#if TERNARY_HAVE_LZMA
    case Codec::lzma:
      return detail::lzma_decompress(bytes, expected_size);
#endif
    default:
      break;
  }
  throw IOError("decompress: unreachable codec");
}

}  // namespace ternary
