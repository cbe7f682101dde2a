// The train-side optimizers, schedules and clipping: #include "eformer/optim/optim.h".
#pragma once
#include "eformer/optim/adamw.h"
#include "eformer/optim/clip.h"
#include "eformer/optim/optimizer.h"
#include "eformer/optim/schedule.h"
#include "eformer/optim/sgd.h"
