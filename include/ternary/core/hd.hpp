// TERNARY_HD marks functions that must run on the host and, under nvcc, on a CUDA device too
// (the elementwise functors of core/expr.hpp, evaluated by backend/cuda/elementwise.cuh).
// Without nvcc it expands to nothing, so the CPU build never sees a CUDA keyword.
#pragma once

#if defined(__CUDACC__)
#define TERNARY_HD __host__ __device__
#else
#define TERNARY_HD
#endif
