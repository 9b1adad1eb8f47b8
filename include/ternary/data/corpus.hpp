// The bundled corpus: the King James Bible (public domain, from Debian's bible-kjv), one verse
// a line, zstd-compressed in data/kjv.txt.zst (see data/README.md). Small enough to ship,
// large enough (4.4 MB) to train a small byte-level model in minutes.
//
// The data directory is fixed at compile time: define TERNARY_DATA_DIR (the build does, to
// the source tree's data/ or the installed share/ternary); without it, "data" relative to the
// working directory is used.
#pragma once

#include <sys/stat.h>

#include <string>

#include "ternary/core/error.hpp"
#include "ternary/data/text.hpp"

#ifndef TERNARY_DATA_DIR
#define TERNARY_DATA_DIR "data"
#endif

namespace ternary {

inline constexpr const char* kCorpusFile = "kjv.txt.zst";

// TERNARY_DATA_DIR/kjv.txt.zst; throws IOError if it is not there.
inline std::string default_corpus_path() {
  std::string path = std::string(TERNARY_DATA_DIR) + "/" + kCorpusFile;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw IOError(detail::cat("default_corpus_path: the bundled corpus ", path,
                              " is missing (TERNARY_DATA_DIR = \"", TERNARY_DATA_DIR,
                              "\"; define it to the directory holding ", kCorpusFile,
                              ", or run from the project root)"));
  return path;
}

// The bundled corpus as bytes, split into train/val by split_text's rule (last val_fraction).
inline TextSplit load_default_corpus(double val_fraction = kDefaultValFraction) {
  return load_text(default_corpus_path(), val_fraction);
}

}  // namespace ternary
