// Data: the byte-level tokenizer, corpora and their splits, training and evaluation batches, the
// Fashion-MNIST images and the LRA-style task generators (ListOps, Pathfinder):
// #include "eformer/data/data.h".
#pragma once
#include "eformer/data/batches.h"
#include "eformer/data/corpus.h"
#include "eformer/data/duplication.h"
#include "eformer/data/segments.h"
#include "eformer/data/tokenizer.h"
#include "eformer/data/fashion_mnist.h"
#include "eformer/data/idx.h"
#include "eformer/data/listops.h"
#include "eformer/data/pathfinder.h"
