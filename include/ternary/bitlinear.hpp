// Everything for ternary layers: Ternary<STE> / Ternary<QuEST> weights, int8 activations,
// the gradual (lambda) schedule, packing, RMSNorm, Linear, BitLinear and its packed
// inference form — with the tensors, autograd and ops they build on.
#pragma once

#include "ternary/nn/bitlinear.hpp"
#include "ternary/nn/linear.hpp"
#include "ternary/nn/projection.hpp"
#include "ternary/nn/rmsnorm.hpp"
#include "ternary/quant/activation.hpp"
#include "ternary/quant/bitlinear_mlp.hpp"
#include "ternary/quant/hadamard.hpp"
#include "ternary/quant/packing.hpp"
#include "ternary/quant/quest.hpp"
#include "ternary/quant/schedule.hpp"
#include "ternary/quant/ternary.hpp"
#include "ternary/ternary.hpp"
