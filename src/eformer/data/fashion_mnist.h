// Fashion-MNIST (Xiao et al. 2017): 28 x 28 grey images of clothing (levels 0..255) in 10 classes,
// 60,000 for training and 10,000 for testing, from Debian's dataset-fashion-mnist package
// (gzip-compressed idx files in /usr/share/datasets/fashion-mnist; scripts/prepare-data.sh writes
// them decompressed to data/fashion-mnist/). Splits: train = the first 55,000 training images,
// valid = the last 5,000, test = the 10,000 test images.
//
// Two uses: pixel-by-pixel generation (a corpus of records, below: `--data fashion-mnist` of
// `eformer train`, reported in bits per dimension), and classification of the 784 pixels as a
// sequence (the "Image" task of the LRA-style benchmark).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eformer/data/corpus.h"

namespace eformer::data {

inline constexpr int64_t kFashionMnistSide = 28, kFashionMnistPixels = 784, kFashionMnistClasses = 10;
inline constexpr int64_t kFashionMnistValid = 5000;
// The name that selects it where a corpus path is expected (`--data fashion-mnist`).
inline constexpr const char* kFashionMnistName = "fashion-mnist";

struct ImageSet {
  int64_t count = 0;
  std::vector<uint8_t> pixels;  // count * 784, row-major images
  std::vector<uint8_t> labels;  // count, 0..9
};

// The folder holding the four decompressed idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
// t10k-...): $EFORMER_FASHION_MNIST when set and non-empty, else data/fashion-mnist in the resource
// folder, else /usr/share/datasets/fashion-mnist when it holds them decompressed. IOError naming
// where it looked (and that scripts/prepare-data.sh extracts them) otherwise.
std::string fashion_mnist_dir();

// One split's images and labels from `dir` (empty: fashion_mnist_dir()). IOError on a corrupt file
// (idx.h), images that are not 28 x 28, label files whose count differs, or a label above 9.
ImageSet load_fashion_mnist(Split split, const std::string& dir = "");

// The corpus for pixel-by-pixel generation: every image is a record of 785 tokens, a start token 0
// then its 784 pixels in raster order, so a model of context 784 (inputs = the record's first 784
// tokens, targets = its last 784) predicts every pixel once, the first from the start token alone.
// Its splits are those above; its unit is "dim" (bits per dimension).
Corpus fashion_mnist_corpus(const std::string& dir = "");

}  // namespace eformer::data
