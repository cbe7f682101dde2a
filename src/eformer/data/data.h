// Data: the byte-level tokenizer, corpora and their splits, training and evaluation batches:
// #include "eformer/data/data.h".
#pragma once
#include "eformer/data/batches.h"
#include "eformer/data/corpus.h"
#include "eformer/data/duplication.h"
#include "eformer/data/segments.h"
#include "eformer/data/tokenizer.h"
