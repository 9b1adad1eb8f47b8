// The device side of the kernels' index checks (cuda.hpp's IndexFaults): the first index found
// outside its range is written to the fault slot (device memory), which the host reads at its
// next synchronisation and throws from. Later faults are dropped (one error is reported).
#pragma once

#ifndef __CUDACC__
#error "ternary/backend/cuda/*.cuh holds CUDA kernels: compile with nvcc (-DTERNARY_CUDA=ON)"
#endif

#include <cstdint>

#include "ternary/backend/cuda/cuda.hpp"

namespace ternary::backend::cuda_detail {

// Where a kernel reports: the slot and the check's number (cuda::index_check).
struct IndexFaultSlot {
  IndexFault* fault = nullptr;
  int check = 0;
};

__device__ inline void report_index_fault(IndexFaultSlot s, int64_t position, int64_t value) {
  if (atomicCAS(&s.fault->flag, 0u, 1u) == 0u) {
    s.fault->check = s.check;
    s.fault->position = position;
    s.fault->value = value;
  }
}

// The slot for a check by op of indices (what: "id", "target") of `shape` (range: the valid
// range in the message's words).
inline IndexFaultSlot index_fault_slot(const char* op, const char* what, const Shape& shape,
                                       std::string range) {
  const auto [fault, check] = cuda::index_check(IndexCheck{op, what, shape, std::move(range)});
  return {fault, check};
}

}  // namespace ternary::backend::cuda_detail
