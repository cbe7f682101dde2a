#include "eformer/data/fashion_mnist.h"

#include <cstdlib>
#include <filesystem>

#include "eformer/core/error.h"
#include "eformer/data/idx.h"
#include "eformer/io/resources.h"

namespace eformer::data {
namespace {

namespace fs = std::filesystem;

constexpr const char* kDebianDir = "/usr/share/datasets/fashion-mnist";
constexpr const char* kTrainImages = "train-images-idx3-ubyte";

bool holds_files(const std::string& dir) { return !dir.empty() && fs::exists(fs::path(dir) / kTrainImages); }

ImageSet read_pair(const std::string& dir, const std::string& prefix) {
  const std::string images_path = (fs::path(dir) / (prefix + "-images-idx3-ubyte")).string();
  const std::string labels_path = (fs::path(dir) / (prefix + "-labels-idx1-ubyte")).string();
  IdxArray images = read_idx(images_path), labels = read_idx(labels_path);
  EF_CHECK(images.shape.size() == 3 && images.shape[1] == kFashionMnistSide && images.shape[2] == kFashionMnistSide,
           IOError, "fashion-mnist: '", images_path, "' must hold images of 28 x 28 (rank 3), got rank ",
           images.shape.size());
  EF_CHECK(labels.shape.size() == 1 && labels.shape[0] == images.shape[0], IOError, "fashion-mnist: '", labels_path,
           "' must hold one label per image (", images.shape[0], "), got shape of rank ", labels.shape.size(),
           " and ", labels.shape[0], " entries");
  for (size_t i = 0; i < labels.data.size(); ++i)
    EF_CHECK(labels.data[i] < kFashionMnistClasses, IOError, "fashion-mnist: '", labels_path, "' has label ",
             int(labels.data[i]), " at index ", i, "; classes are 0..9");
  return {images.shape[0], std::move(images.data), std::move(labels.data)};
}

}  // namespace

std::string fashion_mnist_dir() {
  const char* env = std::getenv("EFORMER_FASHION_MNIST");
  if (env != nullptr && env[0] != '\0') {
    EF_CHECK(holds_files(env), IOError, "fashion-mnist: EFORMER_FASHION_MNIST='", env, "' holds no ", kTrainImages,
             "; point it at the folder of the decompressed idx files, or unset it");
    return env;
  }
  std::string prepared = io::find_resource("data/fashion-mnist");
  if (holds_files(prepared)) return prepared;
  if (holds_files(kDebianDir)) return kDebianDir;
  throw IOError(std::string("fashion-mnist: the decompressed idx files were not found; looked in "
                            "$EFORMER_FASHION_MNIST (unset), data/fashion-mnist in ") +
                io::resource_search_description() + ", and " + kDebianDir +
                ". Install Debian's dataset-fashion-mnist (scripts/install-deps.sh) and run scripts/prepare-data.sh");
}

ImageSet load_fashion_mnist(Split split, const std::string& dir_in) {
  const std::string dir = dir_in.empty() ? fashion_mnist_dir() : dir_in;
  if (split == Split::Test) return read_pair(dir, "t10k");
  ImageSet all = read_pair(dir, "train");
  EF_CHECK(all.count > kFashionMnistValid, IOError, "fashion-mnist: '", dir, "' has ", all.count,
           " training images; the valid split takes the last ", kFashionMnistValid);
  const int64_t begin = split == Split::Train ? 0 : all.count - kFashionMnistValid;
  const int64_t end = split == Split::Train ? all.count - kFashionMnistValid : all.count;
  ImageSet s;
  s.count = end - begin;
  s.pixels.assign(all.pixels.begin() + begin * kFashionMnistPixels, all.pixels.begin() + end * kFashionMnistPixels);
  s.labels.assign(all.labels.begin() + begin, all.labels.begin() + end);
  return s;
}

Corpus fashion_mnist_corpus(const std::string& dir_in) {
  const std::string dir = dir_in.empty() ? fashion_mnist_dir() : dir_in;
  const int64_t record = kFashionMnistPixels + 1;
  std::string bytes;
  int64_t counts[3] = {};
  for (Split s : {Split::Train, Split::Valid, Split::Test}) {
    ImageSet set = load_fashion_mnist(s, dir);
    counts[int(s)] = set.count;
    bytes.reserve(bytes.size() + size_t(set.count * record));
    for (int64_t i = 0; i < set.count; ++i) {
      bytes.push_back('\0');  // the start token
      bytes.append(reinterpret_cast<const char*>(set.pixels.data() + i * kFashionMnistPixels),
                   size_t(kFashionMnistPixels));
    }
  }
  return Corpus::from_records(std::move(bytes), record, counts[int(Split::Valid)], counts[int(Split::Test)],
                              std::string(kFashionMnistName) + " (" + dir + ")", "dim");
}

}  // namespace eformer::data
