// Shared by the fuzz targets: the readers under test take file paths (that is how users call
// them), so each input is written to a per-process scratch file first.
//
// A reader may reject an input only with a ternary::Error (IOError, ShapeError, ...), whose
// message names the file and the field; anything else escaping it (std::bad_alloc, a JSON
// library exception, an out_of_range from .at()) is a bug, and the target lets it escape so
// that libFuzzer reports it as a crash. ASan and UBSan catch the rest.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace ternary::fuzz {

// Writes `data` to a scratch file whose name ends in `suffix` and returns its path.
inline std::string write_input(const uint8_t* data, size_t size, const std::string& suffix) {
  const char* dir = std::getenv("TMPDIR");
  const std::string path = std::string(dir && *dir ? dir : "/tmp") + "/ternary_fuzz_" +
                           std::to_string(::getpid()) + suffix;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write the scratch file %s\n", path.c_str());
    std::abort();
  }
  return path;
}

}  // namespace ternary::fuzz
