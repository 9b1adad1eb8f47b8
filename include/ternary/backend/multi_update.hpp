// The optimizers' elementwise updates as records of raw pointers, one per tensor, so that a
// device backend applies a whole step's worth in one launch (backend/cuda/optim.cuh) instead of
// a few small kernels per parameter: the GPT's step updates ~90 tensors, most of them vectors of
// 512 values, where each launch costs more than its work. The CPU applies the same formulas as
// expressions, tensor by tensor (optim/adamw.hpp, optim/muon.hpp, optim/clip.hpp).
// Every run is contiguous; n values each.
#pragma once

#include <cstdint>

namespace ternary::backend {

// AdamW (optim/adamw.hpp), with its constants in T as the expressions there take them:
//   m = m beta1 + g one_minus_beta1;  v = v beta2 + g^2 one_minus_beta2
//   p = p decay - m step_size / (sqrt(v) / bc2_sqrt + eps)
template <class T>
struct AdamWRun {
  T* p;
  const T* g;
  T* m;
  T* v;
  int64_t n;
  T decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
};

// Muon's momentum (optim/muon.hpp): buf = buf momentum + g, and the matrix Newton-Schulz
// orthogonalises, eff = g + buf momentum (nesterov) or buf, written to eff (null: not wanted,
// as on a rank that does not own the matrix).
template <class T>
struct MomentumRun {
  T* buf;
  const T* g;
  T* eff;
  int64_t n;
  T momentum;
  bool nesterov;
};

// Muon's update of a weight by its orthogonalised step o: p = p decay - o step.
template <class T>
struct DecayStepRun {
  T* p;
  const T* o;
  int64_t n;
  T decay, step;
};

// A run that is only read (sums of squares) or scaled in place.
template <class T>
struct ValueRun {
  T* x;
  int64_t n;
};

}  // namespace ternary::backend
