// Everything to train, export and score the Parameter Golf GPT: the model, optimizers,
// data, checkpoints, the artifact and evaluation.
#pragma once

#include "ternary/bitlinear.hpp"
#include "ternary/data/batcher.hpp"
#include "ternary/data/corpus.hpp"
#include "ternary/data/shards.hpp"
#include "ternary/data/text.hpp"
#include "ternary/io/artifact.hpp"
#include "ternary/io/gpt_artifact.hpp"
#include "ternary/nn/gpt.hpp"
#include "ternary/optim/adamw.hpp"
#include "ternary/optim/clip.hpp"
#include "ternary/optim/muon.hpp"
#include "ternary/optim/schedule.hpp"
#include "ternary/train/checkpoint.hpp"
#include "ternary/train/evaluate.hpp"
#include "ternary/train/golf_optimizers.hpp"
#include "ternary/train/loop.hpp"
#include "ternary/train/progress.hpp"
