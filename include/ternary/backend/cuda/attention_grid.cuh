// How the CUDA attention kernels (attention.cuh: fp32 SIMT; attention_mma.cuh: tensor cores)
// address heads and map blocks to row tiles.
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cstdint>

namespace ternary::backend::cuda_detail {

struct HeadStrides {
  int64_t b, h, t;
};

// The block's (tile, head, batch) from a 1-d grid of tiles * heads * B blocks. Blocks are
// started roughly in index order, so the tile index varies slowest and the longest tiles (the
// last query tiles, or the first key tiles, under the causal mask) come first: short blocks
// fill the tail instead of a long one starting last.
struct TileIndex {
  int tile, head, b;
};
template <int ROWS>
__device__ TileIndex tile_index(int T, int heads, bool reverse) {
  const int tiles = (T + ROWS - 1) / ROWS;
  const int per_tile = int(gridDim.x) / tiles;  // heads * B
  const int t = int(blockIdx.x) / per_tile, rem = int(blockIdx.x) % per_tile;
  return {reverse ? tiles - 1 - t : t, rem % heads, rem / heads};
}

}  // namespace ternary::backend::cuda_detail
