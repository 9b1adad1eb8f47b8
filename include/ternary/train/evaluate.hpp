// Validation loss and bits per byte.
//
//   val_bpb = (mean cross-entropy in nats / ln 2) * (target tokens / target bytes)
//
// For byte-level text a token is a byte, so bpb = loss / ln 2. For tokenized shards each
// target token's byte length comes from a table (one entry per token id), as Parameter
// Golf counts bytes of the decoded text.
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <numbers>
#include <string>
#include <vector>

#include "ternary/autograd/tape.hpp"
#include "ternary/data/batcher.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/quant/weight_cache.hpp"

namespace ternary {

struct EvalResult {
  double loss = 0;     // mean cross-entropy, nats per token
  double bpb = 0;      // bits per byte
  int64_t tokens = 0;  // target tokens scored
  double bytes = 0;    // bytes those tokens stand for
};

// Reads a bytes-per-token table: whitespace-separated non-negative integers, one per token
// id in id order. Throws naming the file and the entry at fault.
inline std::vector<double> read_bytes_per_token(const std::string& path, int64_t vocab) {
  std::ifstream in(path);
  if (!in) throw IOError(detail::cat("bytes-per-token table ", path, ": cannot open"));
  std::vector<double> table;
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    const double v = std::strtod(word.c_str(), &end);
    if (end == word.c_str() || *end != '\0' || !(v >= 0) || !std::isfinite(v))
      throw IOError(detail::cat("bytes-per-token table ", path, ": entry ", table.size(), " is '",
                                word, "', not a finite non-negative number"));
    if (int64_t(table.size()) >= vocab)
      throw IOError(detail::cat("bytes-per-token table ", path, ": more than ", vocab,
                                " entries for a vocabulary of ", vocab));
    table.push_back(v);
  }
  if (int64_t(table.size()) != vocab)
    throw IOError(detail::cat("bytes-per-token table ", path, ": ", table.size(),
                              " entries for a vocabulary of ", vocab));
  return table;
}

// Scores a model on validation tokens in order (SequentialBatcher windows). `loss_fn(inputs,
// targets)` returns the mean loss of a batch as a Var; `bytes_per_token` may be empty
// (byte-level: one byte per token). max_batches <= 0 scores every window.
template <class LossFn>
EvalResult evaluate_bpb(LossFn&& loss_fn, SequentialBatcher val,
                        const std::vector<double>& bytes_per_token = {}, int64_t max_batches = 0) {
  NoGrad no_grad;
  quant::QuantizedWeightCache quantize_once;  // the weights do not change while scoring
  EvalResult r;
  double nats = 0;
  int64_t batches = 0;
  val.reset();
  while (auto batch = val.next()) {
    if (max_batches > 0 && batches >= max_batches) break;
    const int64_t n = batch->targets.numel();
    nats += double(loss_fn(batch->inputs, batch->targets).item()) * double(n);
    r.tokens += n;
    if (bytes_per_token.empty()) {
      r.bytes += double(n);
    } else {
      const int32_t* t = batch->targets.data();
      for (int64_t i = 0; i < n; ++i) r.bytes += bytes_per_token[size_t(t[i])];
    }
    ++batches;
  }
  if (r.tokens == 0)
    throw Error(
        "evaluate_bpb: no validation windows (the validation text is shorter than seq + 1)");
  r.loss = nats / double(r.tokens);
  r.bpb = r.bytes > 0 ? nats / std::numbers::ln2 / r.bytes : 0;
  return r;
}

}  // namespace ternary
