// The training layer: configs and presets, checkpoints, the loop, evaluation, generation.
#pragma once
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"
#include "eformer/train/distributed.h"
#include "eformer/train/evaluate.h"
#include "eformer/train/generate.h"
#include "eformer/train/trainer.h"
