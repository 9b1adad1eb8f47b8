// Every CUDA kernel family, for programs compiled by nvcc that run ops on Tensor<T, cuda>.
// Include it FIRST (before core/tensor.hpp and the ops; see cuda.hpp's INCLUDE ORDER note).
#pragma once

// cuda.hpp must come first: it declares every entry point before core/tensor.hpp is read.
#include "ternary/backend/cuda/cuda.hpp"

#include "ternary/backend/cuda/attention.cuh"
#include "ternary/backend/cuda/channel_mix.cuh"
#include "ternary/backend/cuda/elementwise.cuh"
#include "ternary/backend/cuda/embedding.cuh"
#include "ternary/backend/cuda/head_norm_rope.cuh"
#include "ternary/backend/cuda/loss.cuh"
#include "ternary/backend/cuda/matmul.cuh"
#include "ternary/backend/cuda/norm.cuh"
#include "ternary/backend/cuda/optim.cuh"
#include "ternary/backend/cuda/quant.cuh"
#include "ternary/backend/cuda/reduce.cuh"
#include "ternary/backend/cuda/reduce_max.cuh"
#include "ternary/backend/cuda/rope.cuh"
