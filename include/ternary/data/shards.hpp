// Parameter Golf token shards (the fineweb10B_sp1024 *.bin files):
//
//   bytes [0, 1024)    256 little-endian int32 header words:
//                        word 0 = 20240520 (magic), word 1 = 1 (version),
//                        word 2 = token count N, words 3..255 = 0 (reserved)
//   bytes [1024, ...)  N little-endian uint16 tokens; the file is exactly 1024 + 2N bytes.
//
// read_shard validates all of it and throws IOError naming the file, the field and its byte
// offset. glob_files expands a pattern such as "data/fineweb_train_*.bin" in sorted order.
// TokenStream reads a list of shards as one endless token sequence (wrapping around at the
// end), the way the Parameter Golf trainer does, with a resumable position.
#pragma once

#include <glob.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "ternary/core/error.hpp"
#include "ternary/io/file.hpp"

namespace ternary {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int kShardHeaderWords = 256;
inline constexpr uint64_t kShardHeaderBytes = kShardHeaderWords * 4;

// Validates a shard's header against the file size; returns the token count.
inline uint64_t read_shard_header(const InputFile& f) {
  const std::string& p = f.path();
  if (f.size() < kShardHeaderBytes)
    throw IOError(detail::cat("read_shard: ", p, ": file is ", f.size(),
                              " bytes, shorter than the ", kShardHeaderBytes, "-byte header"));
  int32_t h[kShardHeaderWords];
  f.read_at(0, h, sizeof h);
  if (h[0] != kShardMagic)
    throw IOError(detail::cat("read_shard: ", p, ": magic (byte offset 0) is ", h[0], ", expected ",
                              kShardMagic, " (not a token shard?)"));
  if (h[1] != kShardVersion)
    throw IOError(detail::cat("read_shard: ", p, ": version (byte offset 4) is ", h[1],
                              ", expected ", kShardVersion));
  if (h[2] < 0)
    throw IOError(
        detail::cat("read_shard: ", p, ": token count (byte offset 8) is negative (", h[2], ")"));
  const uint64_t n = static_cast<uint64_t>(h[2]);
  if (kShardHeaderBytes + 2 * n != f.size())
    throw IOError(detail::cat("read_shard: ", p, ": token count (byte offset 8) is ", n,
                              ", so the file should be ", kShardHeaderBytes, " + 2*", n, " = ",
                              kShardHeaderBytes + 2 * n, " bytes, but it is ", f.size(), " bytes"));
  return n;
}

inline uint64_t read_shard_header(const std::string& path) {
  return read_shard_header(InputFile(path));
}

// All tokens of one shard. With a vocabulary size, every id is checked against it (the
// error names the file and the byte offset of the first bad id).
inline std::vector<uint16_t> read_shard(const std::string& path, int64_t vocab_size = 0) {
  InputFile f(path);
  const uint64_t n = read_shard_header(f);
  std::vector<uint16_t> tokens(n);
  if (n) f.read_at(kShardHeaderBytes, tokens.data(), n * 2);
  if (vocab_size > 0)
    for (uint64_t i = 0; i < n; ++i)
      if (int64_t(tokens[i]) >= vocab_size)
        throw IOError(detail::cat("read_shard: ", path, ": token id ", tokens[i],
                                  " at byte offset ", kShardHeaderBytes + 2 * i,
                                  " is >= the vocabulary size ", vocab_size));
  return tokens;
}

// Writes a shard (atomically). Throws if there are more tokens than an int32 count can hold.
inline void write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > static_cast<uint64_t>(INT32_MAX))
    throw IOError(detail::cat("write_shard: ", path, ": ", tokens.size(),
                              " tokens do not fit the int32 token count"));
  std::vector<uint8_t> bytes(kShardHeaderBytes + 2 * tokens.size(), 0);
  const int32_t head[3] = {kShardMagic, kShardVersion, static_cast<int32_t>(tokens.size())};
  std::memcpy(bytes.data(), head, sizeof head);
  if (!tokens.empty())
    std::memcpy(bytes.data() + kShardHeaderBytes, tokens.data(), 2 * tokens.size());
  write_file_atomic(path, bytes);
}

// Paths matching a shell pattern (POSIX glob(3)), sorted bytewise so the order does not
// depend on the locale. Throws IOError naming the pattern if nothing matches.
inline std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0) paths.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  if (rc == GLOB_NOMATCH || (rc == 0 && paths.empty()))
    throw IOError(detail::cat("glob_files: no file matches the pattern '", pattern, "'"));
  if (rc != 0)
    throw IOError(detail::cat("glob_files: glob failed for the pattern '", pattern, "' (",
                              rc == GLOB_NOSPACE ? "out of memory" : "read error", ")"));
  std::sort(paths.begin(), paths.end());
  return paths;
}

// One endless sequence of tokens over a list of shards: shard 0, shard 1, ..., shard k-1,
// shard 0, ... Only the current shard is held in memory. take(n) returns the next n tokens,
// crossing shard boundaries as needed; empty shards are skipped.
class TokenStream {
 public:
  // Where the stream stands: the shard index in the list and the next token within it.
  // `epoch` counts completed passes over all shards.
  struct State {
    uint64_t shard = 0, pos = 0, epoch = 0;
    friend bool operator==(const State&, const State&) = default;
  };

  explicit TokenStream(std::vector<std::string> paths) : paths_(std::move(paths)) {
    if (paths_.empty()) throw IOError("TokenStream: the list of shard files is empty");
    bool any = false;
    for (const auto& p : paths_) any |= read_shard_header(p) > 0;  // validates every header
    if (!any) throw IOError(detail::cat("TokenStream: all ", paths_.size(), " shards are empty"));
    restore(State{});
  }
  // Every shard matching a glob pattern, in sorted order.
  static TokenStream from_pattern(const std::string& pattern) {
    return TokenStream(glob_files(pattern));
  }

  const std::vector<std::string>& paths() const { return paths_; }
  State state() const { return state_; }
  void restore(const State& s) {
    if (s.shard >= paths_.size())
      throw IndexError(detail::cat("TokenStream::restore: shard index ", s.shard, " but only ",
                                   paths_.size(), " shards"));
    load(s.shard);
    if (s.pos > tokens_.size())
      throw IndexError(detail::cat("TokenStream::restore: position ", s.pos, " is past the end of ",
                                   paths_[s.shard], " (", tokens_.size(), " tokens)"));
    state_ = s;
  }

  // Fills `out` with the next out.size() tokens.
  void take(std::span<uint16_t> out) {
    size_t done = 0, empty_in_a_row = 0;
    while (done < out.size()) {
      if (state_.pos == tokens_.size()) {
        if (++empty_in_a_row > paths_.size())  // the files changed under us
          throw IOError("TokenStream::take: every shard is empty now");
        advance();
        continue;
      }
      empty_in_a_row = 0;
      size_t n = std::min<size_t>(out.size() - done, tokens_.size() - state_.pos);
      std::copy_n(tokens_.begin() + state_.pos, n, out.begin() + done);
      state_.pos += n;
      done += n;
    }
  }
  std::vector<uint16_t> take(size_t n) {
    std::vector<uint16_t> out(n);
    take(std::span<uint16_t>(out));
    return out;
  }

 private:
  void load(uint64_t shard) {
    if (shard != loaded_) {
      tokens_ = read_shard(paths_[shard]);
      loaded_ = shard;
    }
  }
  void advance() {
    uint64_t next = state_.shard + 1;
    if (next == paths_.size()) next = 0, ++state_.epoch;
    load(next);
    state_.shard = next;
    state_.pos = 0;
  }

  std::vector<std::string> paths_;
  std::vector<uint16_t> tokens_;
  uint64_t loaded_ = UINT64_MAX;
  State state_;
};

}  // namespace ternary
