// Every CUDA kernel family, for programs compiled by nvcc that run ops on Tensor<T, cuda>.
// Include it with (or after) the ops headers; the ops find these overloads by the tag.
#pragma once

#include "ternary/backend/cuda/cuda.hpp"
#include "ternary/backend/cuda/elementwise.cuh"
#include "ternary/backend/cuda/loss.cuh"
#include "ternary/backend/cuda/matmul.cuh"
#include "ternary/backend/cuda/reduce.cuh"
