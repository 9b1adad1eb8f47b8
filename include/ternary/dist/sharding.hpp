// Each rank's share of the data. For a global batch of G sequences and W ranks, rank r takes
// rows [r G/W, (r+1) G/W) of the global batch that a single process would draw for the same
// seed and step, so the W shards together are exactly that batch (and the data-parallel
// gradient, averaged over ranks, is the single-process gradient of the whole batch).
//
// ShardedBatcher wraps data/batcher.hpp's RandomBatcher (built with the *global* batch
// size): every rank draws the same global batch, which costs only G (T+1) token copies, and
// keeps its rows. Its state is the global batcher's, identical on every rank, so checkpoints
// written by rank 0 resume any world size with the same global batch.
//
// shard_chunk does the same for the Parameter Golf layout (G T + 1 consecutive tokens, see
// batch_from_chunk): rank r's rows are tokens [r g T, (r+1) g T + 1), g = G/W.
#pragma once

#include <cstdint>
#include <span>

#include "ternary/data/batcher.hpp"

namespace ternary::dist {

struct ShardRange {
  int64_t start = 0;  // first row of the global batch
  int64_t rows = 0;   // G / W
};

// Rank r's rows of a global batch of `global_batch` rows; throws when G is not a multiple of W.
inline ShardRange shard_rows(int64_t global_batch, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(detail::cat("shard_rows: rank ", rank, " is outside [0, ", world_size, ")"));
  if (global_batch <= 0 || global_batch % world_size != 0)
    throw ShapeError(detail::cat("shard_rows: the global batch of ", global_batch,
                                 " sequences does not split evenly over ", world_size,
                                 " ranks; make it a positive multiple of the world size"));
  const int64_t g = global_batch / world_size;
  return {int64_t(rank) * g, g};
}

// Rank r's rows of a batch (a copy of those rows).
inline Batch shard_batch(const Batch& global, int rank, int world_size) {
  const ShardRange s = shard_rows(global.inputs.size(0), rank, world_size);
  return {global.inputs.narrow(0, s.start, s.rows).clone(),
          global.targets.narrow(0, s.start, s.rows).clone()};
}

// Rank r's tokens of a chunk of G T + 1 tokens (batch_from_chunk(result, G/W, T, vocab)).
inline std::span<const uint16_t> shard_chunk(std::span<const uint16_t> chunk, int64_t global_batch,
                                             int64_t seq, int rank, int world_size) {
  const ShardRange s = shard_rows(global_batch, rank, world_size);
  if (seq <= 0 || chunk.size() != uint64_t(global_batch * seq + 1))
    throw ShapeError(detail::cat("shard_chunk: got ", chunk.size(), " tokens, need global batch ",
                                 global_batch, " * seq ", seq, " + 1 = ", global_batch * seq + 1));
  return chunk.subspan(size_t(s.start * seq), size_t(s.rows * seq + 1));
}

class ShardedBatcher {
 public:
  // `global`: a RandomBatcher whose batch size is the global batch G.
  ShardedBatcher(RandomBatcher global, int rank, int world_size)
      : global_(std::move(global)), rank_(rank), world_(world_size) {
    shard_rows(global_.batch_size(), rank, world_size);  // validates
  }

  // This rank's rows of the batch at the current step; advances the step.
  Batch next() { return shard_batch(global_.next(), rank_, world_); }
  // This rank's rows of the batch at any step.
  Batch batch_at(uint64_t step) const { return shard_batch(global_.batch_at(step), rank_, world_); }

  int64_t batch_size() const { return global_.batch_size() / world_; }  // rows per rank
  int64_t global_batch_size() const { return global_.batch_size(); }
  int64_t seq_len() const { return global_.seq_len(); }
  uint64_t step() const { return global_.step(); }
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  BatcherState state() const { return global_.state(); }
  void restore(const BatcherState& s) { global_.restore(s); }
  const RandomBatcher& global() const { return global_; }

 private:
  RandomBatcher global_;
  int rank_, world_;
};

}  // namespace ternary::dist
