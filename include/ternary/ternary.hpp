// Everything: tensors, autograd, ops. (Layers, models, optimizers and I/O have their own
// convenience includes: ternary/bitlinear.hpp, ternary/gpt.hpp.)
#pragma once

#include "ternary/autograd/gradcheck.hpp"
#include "ternary/autograd/tape.hpp"
#include "ternary/autograd/var.hpp"
#include "ternary/core/tensor.hpp"
#include "ternary/ops/attention.hpp"
#include "ternary/ops/channel_mix.hpp"
#include "ternary/ops/elementwise.hpp"
#include "ternary/ops/embedding.hpp"
#include "ternary/ops/head_norm_rope.hpp"
#include "ternary/ops/loss.hpp"
#include "ternary/ops/matmul.hpp"
#include "ternary/ops/norm.hpp"
#include "ternary/ops/norm_mlp.hpp"
#include "ternary/ops/reduce.hpp"
#include "ternary/ops/residual_linear.hpp"
#include "ternary/ops/rope.hpp"
#include "ternary/ops/rope_attention.hpp"
#include "ternary/ops/softmax.hpp"
#include "ternary/ops/view.hpp"
