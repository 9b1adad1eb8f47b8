// Whole-file reads and atomic writes, shared by the data and io headers. Every error is an
// IOError that names the file and the system's reason (strerror).
//
// Atomic write: the bytes go to a temporary file in the same directory, which is fsync'ed and
// then renamed over the target, and the directory is fsync'ed. A crash leaves either the old
// file or the new one, never a half-written checkpoint.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "ternary/core/error.hpp"

namespace ternary {

// The on-disk formats here are little-endian and are read by memcpy: we only support
// little-endian hosts (x86-64, AArch64, every CUDA host).
static_assert(std::endian::native == std::endian::little,
              "ternary: the file formats assume a little-endian host");

namespace detail {

inline std::string errno_text(int err) {
  return std::strerror(err);
}

// Closes a POSIX file descriptor on scope exit.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `n` bytes at the current position, retrying on EINTR and short reads.
inline void read_exact(int fd, void* dst, size_t n, const std::string& path, uint64_t offset) {
  auto* p = static_cast<char*>(dst);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, p + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      throw IOError(
          cat(path, ": read failed at byte offset ", offset + done, ": ", errno_text(errno)));
    if (r == 0)
      throw IOError(cat(path, ": unexpected end of file at byte offset ", offset + done,
                        " (wanted ", n, " bytes from offset ", offset, ")"));
    done += static_cast<size_t>(r);
  }
}

inline void write_all(int fd, const void* src, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(src);
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd, p + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw IOError(cat(path, ": write failed: ", errno_text(errno)));
    done += static_cast<size_t>(w);
  }
}

}  // namespace detail

// An open file for reading, with its size known up front (so loaders can validate lengths
// before allocating).
class InputFile {
 public:
  explicit InputFile(std::string path) : path_(std::move(path)) {
    guard_.fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (guard_.fd < 0)
      throw IOError(detail::cat(path_, ": cannot open for reading: ", detail::errno_text(errno)));
    struct stat st {};
    if (::fstat(guard_.fd, &st) != 0)
      throw IOError(detail::cat(path_, ": cannot stat: ", detail::errno_text(errno)));
    if (S_ISDIR(st.st_mode)) throw IOError(detail::cat(path_, ": is a directory, not a file"));
    size_ = static_cast<uint64_t>(st.st_size);
  }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Reads `n` bytes starting at byte `offset`.
  void read_at(uint64_t offset, void* dst, size_t n) const {
    if (::lseek(guard_.fd, static_cast<off_t>(offset), SEEK_SET) < 0)
      throw IOError(detail::cat(path_, ": cannot seek to byte offset ", offset, ": ",
                                detail::errno_text(errno)));
    detail::read_exact(guard_.fd, dst, n, path_, offset);
  }

 private:
  std::string path_;
  detail::FdGuard guard_;
  uint64_t size_ = 0;
};

// The whole file as bytes.
inline std::vector<uint8_t> read_file(const std::string& path) {
  InputFile f(path);
  std::vector<uint8_t> bytes(f.size());
  if (!bytes.empty()) f.read_at(0, bytes.data(), bytes.size());
  return bytes;
}

// Writes `bytes` to `path` atomically (temp file + fsync + rename + directory fsync).
inline void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes) {
  std::string tmpl = path + ".tmp.XXXXXX";
  detail::FdGuard g;
  g.fd = ::mkstemp(tmpl.data());
  if (g.fd < 0)
    throw IOError(detail::cat(
        path, ": cannot create a temporary file beside it: ", detail::errno_text(errno)));
  const std::string tmp = tmpl;
  try {
    ::fchmod(g.fd, 0644);  // mkstemp makes 0600; a checkpoint should be readable like any file
    detail::write_all(g.fd, bytes.data(), bytes.size(), tmp);
    if (::fsync(g.fd) != 0)
      throw IOError(detail::cat(tmp, ": fsync failed: ", detail::errno_text(errno)));
    int fd = g.fd;
    g.fd = -1;
    if (::close(fd) != 0)
      throw IOError(detail::cat(tmp, ": close failed: ", detail::errno_text(errno)));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw IOError(
          detail::cat(path, ": cannot rename ", tmp, " over it: ", detail::errno_text(errno)));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable. Failure here is not fatal: the data is already in place.
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  detail::FdGuard d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) ::fsync(d.fd);
}

}  // namespace ternary
