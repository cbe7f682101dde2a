// The idx reader (good and corrupt files), corpora of records and their batches, and the
// Fashion-MNIST loader (skipped, with the reason, when the decompressed files are absent).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "eformer/data/data.h"

#include "../test_util.h"

namespace eformer::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

std::string idx_bytes(const std::vector<uint32_t>& shape, const std::vector<uint8_t>& data, uint8_t type = 0x08) {
  std::string s = {'\0', '\0', char(type), char(shape.size())};
  for (uint32_t d : shape)
    for (int k = 24; k >= 0; k -= 8) s.push_back(char((d >> k) & 0xFF));
  s.append(data.begin(), data.end());
  return s;
}

TEST(Idx, ParsesShapesAndData) {
  std::vector<uint8_t> data(2 * 3 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(i * 7);
  IdxArray a = parse_idx(idx_bytes({2, 3, 4}, data), "t");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(a.data, data);
  EXPECT_EQ(parse_idx(idx_bytes({3}, {0, 9, 255}), "l").data, (std::vector<uint8_t>{0, 9, 255}));
}

TEST(Idx, RejectsCorruptFiles) {
  auto msg = [](const std::string& bytes) { return error_of<IOError>([&] { parse_idx(bytes, "f.idx"); }); };
  EXPECT_NE(msg("\x1f\x8b\x08\x00rest").find("gzip"), std::string::npos);
  EXPECT_NE(msg(std::string("\x01\x00\x08\x01\x00\x00\x00\x01\x05", 9)).find("bad magic"), std::string::npos);
  EXPECT_NE(msg(idx_bytes({2}, {1, 2}, 0x0D)).find("only unsigned bytes"), std::string::npos);
  EXPECT_NE(msg(idx_bytes({}, {})).find("0 dimensions"), std::string::npos);
  EXPECT_NE(msg(std::string("\0\0\x08", 3)).find("truncated"), std::string::npos);
  EXPECT_NE(msg(idx_bytes({2, 3}, {}).substr(0, 9)).find("header"), std::string::npos);
  std::string short_data = msg(idx_bytes({2, 3}, {1, 2, 3, 4, 5}));
  EXPECT_NE(short_data.find("truncated: its sizes need 6 bytes"), std::string::npos) << short_data;
  EXPECT_NE(msg(idx_bytes({2}, {1, 2, 3})).find("too long"), std::string::npos);
  EXPECT_NE(msg(idx_bytes({2, 0}, {})).find("size 0"), std::string::npos);
  EXPECT_NE(msg(idx_bytes({65536, 65536, 65536}, {1})).find("truncated"), std::string::npos);
  EXPECT_NE(error_of<IOError>([] { read_idx("/nonexistent/file.idx"); }).find("/nonexistent/file.idx"),
            std::string::npos);
}

// A fake Fashion-MNIST folder: n_train training and n_test test images with pixel = image index.
void write_fake(const fs::path& dir, uint32_t n_train, uint32_t n_test, uint8_t bad_label = 0) {
  fs::create_directories(dir);
  for (auto [prefix, n] : {std::pair<std::string, uint32_t>{"train", n_train}, {"t10k", n_test}}) {
    std::vector<uint8_t> pixels(size_t(n) * 784), labels(n);
    for (uint32_t i = 0; i < n; ++i) {
      std::fill(pixels.begin() + i * 784, pixels.begin() + (i + 1) * 784, uint8_t(i));
      labels[i] = uint8_t(i % 10);
    }
    if (bad_label) labels[1] = bad_label;
    std::ofstream(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary) << idx_bytes({n, 28, 28}, pixels);
    std::ofstream(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary) << idx_bytes({n}, labels);
  }
}

TEST(FashionMnist, SplitsAndRecordsOfAFakeFolder) {
  testing::TempDir tmp;
  const fs::path dir = tmp.path / "fm";
  write_fake(dir, 5003, 4);
  ImageSet valid = load_fashion_mnist(Split::Valid, dir.string());
  EXPECT_EQ(valid.count, 5000);
  EXPECT_EQ(valid.pixels[0], 3);  // the last 5000 training images
  EXPECT_EQ(valid.labels[0], 3);
  EXPECT_EQ(load_fashion_mnist(Split::Train, dir.string()).count, 3);
  EXPECT_EQ(load_fashion_mnist(Split::Test, dir.string()).count, 4);

  Corpus c = fashion_mnist_corpus(dir.string());
  EXPECT_EQ(c.record_length(), 785);
  EXPECT_EQ(c.unit(), "dim");
  EXPECT_EQ(c.split_size(Split::Train), 3 * 785);
  EXPECT_EQ(c.split_size(Split::Test), 4 * 785);
  EXPECT_NO_THROW(c.check_context(784));
  EXPECT_NE(error_of<ValueError>([&] { c.check_context(256); }).find("model.max_len=784"), std::string::npos);

  // Training windows are whole images: a start token then the pixels, targets shifted by one.
  TokenSource train(c, Split::Train);
  for (uint64_t step = 0; step < 5; ++step) {
    Batch b = sample_batch(train, 4, 784, 1, step);
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t image = b.offsets[size_t(r)] / 785;
      ASSERT_EQ(b.offsets[size_t(r)] % 785, 0);
      ASSERT_LT(image, 3);
      EXPECT_EQ(b.inputs.data<int64_t>()[r * 784], 0);
      EXPECT_EQ(b.inputs.data<int64_t>()[r * 784 + 1], image);
      EXPECT_EQ(b.targets.data<int64_t>()[r * 784 + 783], image);
    }
  }
  EXPECT_NE(error_of<ValueError>([&] { sample_batch(train, 1, 100, 0, 0); }).find("records of 785"),
            std::string::npos);
  // Evaluation visits each test image once and predicts all of its pixels.
  EvalWindows w(TokenSource(c, Split::Test), 784, 3);
  EXPECT_EQ(w.num_windows(), 4);
  EXPECT_EQ(w.num_targets(), 4 * 784);
  EXPECT_EQ(w.num_batches(), 2);
  Batch last = w.batch(1);
  EXPECT_EQ(last.offsets, std::vector<int64_t>{3 * 785});
  EXPECT_EQ(last.targets.data<int64_t>()[0], 3);
}

TEST(FashionMnist, RejectsBadFolders) {
  testing::TempDir tmp;
  write_fake(tmp.path / "bad", 5003, 4, /*bad_label=*/12);
  EXPECT_NE(error_of<IOError>([&] { load_fashion_mnist(Split::Test, (tmp.path / "bad").string()); })
                .find("label 12 at index 1"),
            std::string::npos);
  write_fake(tmp.path / "few", 10, 4);
  EXPECT_NE(error_of<IOError>([&] { load_fashion_mnist(Split::Train, (tmp.path / "few").string()); })
                .find("10 training images"),
            std::string::npos);
  std::ofstream(tmp.path / "few" / "t10k-labels-idx1-ubyte", std::ios::binary) << idx_bytes({3}, {1, 2, 3});
  EXPECT_NE(error_of<IOError>([&] { load_fashion_mnist(Split::Test, (tmp.path / "few").string()); })
                .find("one label per image (4)"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { Corpus::from_records(std::string(10, 'a'), 3, 1, 1, "r", "dim"); })
                .find("not whole records"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { Corpus::from_records(std::string(6, 'a'), 3, 1, 1, "r", "dim"); })
                .find("cannot hold"),
            std::string::npos);
}

TEST(FashionMnist, TheDebianDataWhenPrepared) {
  std::string dir;
  try {
    dir = fashion_mnist_dir();
  } catch (const IOError& e) {
    GTEST_SKIP() << "Fashion-MNIST not prepared (scripts/install-deps.sh, scripts/prepare-data.sh): " << e.what();
  }
  ImageSet test = load_fashion_mnist(Split::Test, dir);
  EXPECT_EQ(test.count, 10000);
  EXPECT_EQ(load_fashion_mnist(Split::Train, dir).count, 55000);
  int counts[10] = {};
  for (uint8_t l : test.labels) ++counts[l];
  for (int c : counts) EXPECT_EQ(c, 1000);  // the test set has 1000 images per class
}

}  // namespace
}  // namespace eformer::data
