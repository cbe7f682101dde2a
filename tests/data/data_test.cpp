#include "eformer/data/data.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "eformer/core/parallel.h"

#include "../test_util.h"

namespace eformer::data {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

using testing::error_of;

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  EXPECT_EQ(tok.decode(tok.encode(all)), all);
  EXPECT_EQ(tok.decode(tok.encode_tensor(all)), all);
  std::vector<int64_t> ids = tok.encode("h\xC3\xA9");
  EXPECT_EQ(ids, (std::vector<int64_t>{104, 0xC3, 0xA9}));
  Tensor t = tok.encode_tensor("abc");
  EXPECT_EQ(t.dtype(), DType::Int64);
  EXPECT_EQ(t.shape(), Shape{3});
}

TEST(ByteTokenizer, RejectsIdsOutsideTheVocabulary) {
  ByteTokenizer tok;
  std::string msg = error_of<IndexError>([&] { tok.decode(std::vector<int64_t>{65, 66, 256}); });
  EXPECT_NE(msg.find("id 256 at position 2"), std::string::npos) << msg;
  msg = error_of<IndexError>([&] { tok.decode(Tensor::from_vector(std::vector<int64_t>{-7}, {1})); });
  EXPECT_NE(msg.find("id -7"), std::string::npos) << msg;
  EXPECT_THROW(tok.decode(Tensor::zeros({2, 2}, DType::Int64)), ShapeError);
  EXPECT_THROW(tok.decode(Tensor::zeros({2})), ShapeError);
}

TEST(Utf8, InvalidOffset) {
  EXPECT_EQ(utf8_invalid_offset(""), -1);
  EXPECT_EQ(utf8_invalid_offset("ascii \xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80"), -1);
  EXPECT_EQ(utf8_invalid_offset("ab\x80"), 2);            // stray continuation
  EXPECT_EQ(utf8_invalid_offset("a\xC0\x80"), 1);         // overlong
  EXPECT_EQ(utf8_invalid_offset("\xE0\x80\x80"), 0);      // overlong 3-byte
  EXPECT_EQ(utf8_invalid_offset("x\xED\xA0\x80"), 1);     // surrogate
  EXPECT_EQ(utf8_invalid_offset("\xF4\x90\x80\x80"), 0);  // above U+10FFFF
  EXPECT_EQ(utf8_invalid_offset("abc\xE2\x9C"), 3);       // truncated at the end
  EXPECT_EQ(utf8_invalid_offset("\xFF"), 0);
}

TEST(Utf8StreamDecoder, EmitsOnlyWholeCharacters) {
  Utf8StreamDecoder dec;
  const std::string emoji = "\xF0\x9F\x98\x80";
  EXPECT_EQ(dec.push(0xF0), "");
  EXPECT_EQ(dec.push(0x9F), "");
  EXPECT_EQ(dec.push(0x98), "");
  EXPECT_EQ(dec.pending(), 3);
  EXPECT_EQ(dec.push(0x80), emoji);
  EXPECT_EQ(dec.push('a'), "a");
  // An interrupted sequence becomes U+FFFD, and the interrupting byte starts afresh.
  EXPECT_EQ(dec.push_bytes("\xE2\x9C"
                           "b"),
            "\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(dec.push_bytes("\xC3"), "");
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.pending(), 0);
  EXPECT_THROW(dec.push(256), IndexError);
}

TEST(Corpus, SplitsPartitionTheBytes) {
  Corpus c = Corpus::from_text(std::string(1001, 'x'));
  EXPECT_EQ(c.split_begin(Split::Valid), 900);  // floor(1001 * 0.90)
  EXPECT_EQ(c.split_begin(Split::Test), 950);   // floor(1001 * 0.95)
  EXPECT_EQ(c.split_size(Split::Train) + c.split_size(Split::Valid) + c.split_size(Split::Test), 1001);
  EXPECT_EQ(c.split_end(Split::Train), c.split_begin(Split::Valid));
  EXPECT_EQ(c.split_end(Split::Valid), c.split_begin(Split::Test));
  EXPECT_EQ(c.split_end(Split::Test), c.size());
  // A boundary inside a character moves to the next character start.
  std::string e;
  for (int i = 0; i < 1001; ++i) e += "\xC3\xA9";
  Corpus m = Corpus::from_text(e);
  EXPECT_EQ(m.split_begin(Split::Valid), 1802);  // floor(2002 * 0.9) = 1801 is a continuation byte
  EXPECT_EQ(m.split_begin(Split::Test), 1902);   // floor(2002 * 0.95) = 1901 -> 1902
  Corpus custom = Corpus::from_text(std::string(100, 'y'), "<y>", SplitFractions{0.2, 0.3});
  EXPECT_EQ(custom.split_size(Split::Train), 50);
  EXPECT_EQ(custom.split_size(Split::Valid), 20);
  EXPECT_EQ(custom.split_size(Split::Test), 30);
  EXPECT_EQ(parse_split("validation"), Split::Valid);
  EXPECT_THROW(parse_split("dev"), ValueError);
}

TEST(Corpus, LoadsAFolderInPathOrder) {
  TempDir dir;
  dir.write("b/c.txt", "3");
  dir.write("b.txt", "2");
  dir.write("a.txt", "1");
  dir.write(".hidden", "no");
  dir.write(".git/HEAD", "no");
  dir.write("b/.x.swp", "\xFF");
  Corpus c = Corpus::from_path(dir.path.string());
  EXPECT_EQ(c.text(), "1\n2\n3");
  Corpus f = Corpus::from_path((dir.path / "a.txt").string());
  EXPECT_EQ(f.text(), "1");
}

TEST(Corpus, Errors) {
  TempDir dir;
  std::string missing = (dir.path / "missing.txt").string();
  std::string msg = error_of<IOError>([&] { Corpus::from_path(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  fs::path empty = dir.write("empty.txt", "");
  EXPECT_THROW(Corpus::from_path(empty.string()), ValueError);
  fs::path bad = dir.write("sub/bad.txt", "abc\xC3\xA9\xC3(");
  msg = error_of<IOError>([&] { Corpus::from_path((dir.path / "sub").string()); });
  EXPECT_NE(msg.find("bad.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte offset 5"), std::string::npos) << msg;
  fs::create_directories(dir.path / "none");
  EXPECT_THROW(Corpus::from_path((dir.path / "none").string()), ValueError);
  Corpus small = Corpus::from_text(std::string(100, 'z'));  // 90 / 5 / 5
  msg = error_of<ValueError>([&] { small.check_context(5); });
  EXPECT_NE(msg.find("valid split has 5 tokens"), std::string::npos) << msg;
  small.check_context(4);
  EXPECT_THROW(sample_batch(small, Split::Test, 1, 5, 0, 0), ValueError);
}

TEST(Corpus, DefaultPathFollowsTheEnvironment) {
  TempDir dir;
  fs::path f = dir.write("corpus.txt", "text");
  const char* old = std::getenv("EFORMER_DATA");
  std::string saved = old ? old : "";
  ::setenv("EFORMER_DATA", f.c_str(), 1);
  EXPECT_EQ(default_corpus_path(), f.string());
  ::setenv("EFORMER_DATA", (dir.path / "gone").c_str(), 1);
  EXPECT_THROW(default_corpus_path(), IOError);
  ::unsetenv("EFORMER_DATA");
  try {
    std::string p = default_corpus_path();
    EXPECT_TRUE(p.ends_with("/data/kjv.txt")) << p;
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("scripts/prepare-data.sh"), std::string::npos) << e.what();
  }
  if (old) ::setenv("EFORMER_DATA", saved.c_str(), 1);
}

Corpus letters_corpus(int64_t n) {
  std::string s;
  uint64_t x = 12345;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    s.push_back(char('a' + (x >> 59) % 26));
  }
  return Corpus::from_text(s);
}

TEST(Batches, DeterministicPerStepAndIndependentOfThreads) {
  Corpus c = letters_corpus(50000);
  const int before = parallel::num_threads();
  parallel::set_num_threads(1);
  Batch one = sample_batch(c, Split::Train, 4096, 16, 42, 7);
  parallel::set_num_threads(4);
  Batch four = sample_batch(c, Split::Train, 4096, 16, 42, 7);
  parallel::set_num_threads(before);
  EXPECT_EQ(one.inputs.to_int_vector(), four.inputs.to_int_vector());
  EXPECT_EQ(one.targets.to_int_vector(), four.targets.to_int_vector());
  EXPECT_EQ(one.offsets, four.offsets);
  EXPECT_NE(sample_batch(c, Split::Train, 8, 16, 42, 8).offsets,
            sample_batch(c, Split::Train, 8, 16, 42, 9).offsets);
  EXPECT_NE(sample_batch(c, Split::Train, 8, 16, 1, 8).offsets,
            sample_batch(c, Split::Train, 8, 16, 2, 8).offsets);
}

TEST(Batches, WindowsLieInsideTheSplitAndTargetsAreShifted) {
  Corpus c = letters_corpus(5000);
  std::string_view valid = c.split_text(Split::Valid);
  for (uint64_t step = 0; step < 20; ++step) {
    Batch b = sample_batch(c, Split::Valid, 8, 32, 3, step);
    ASSERT_EQ(b.inputs.shape(), (Shape{8, 32}));
    const int64_t* in = b.inputs.data<int64_t>();
    const int64_t* tg = b.targets.data<int64_t>();
    for (int64_t r = 0; r < 8; ++r) {
      int64_t o = b.offsets[size_t(r)];
      ASSERT_GE(o, 0);
      ASSERT_LE(o + 33, int64_t(valid.size()));
      for (int64_t t = 0; t < 32; ++t) {
        EXPECT_EQ(in[r * 32 + t], uint8_t(valid[size_t(o + t)]));
        EXPECT_EQ(tg[r * 32 + t], uint8_t(valid[size_t(o + t + 1)]));
      }
    }
  }
  // A tensor of the same tokens gives the same batch.
  Batch from_tensor = sample_batch(TokenSource(c.split_tokens(Split::Valid)), 8, 32, 3, 5);
  EXPECT_EQ(from_tensor.inputs.to_int_vector(),
            sample_batch(c, Split::Valid, 8, 32, 3, 5).inputs.to_int_vector());
}

// Data parallelism: the ranks' rows of a batch, put together, are the batch.
TEST(Batches, RowsOfABatchAreThoseRowsOfTheWholeBatch) {
  Corpus c = letters_corpus(5000);
  TokenSource tokens(c, Split::Train);
  Batch whole = sample_batch(tokens, 8, 16, 3, 11);
  std::vector<int64_t> inputs, targets, offsets;
  for (int64_t rank = 0; rank < 4; ++rank) {
    Batch part = sample_batch_rows(tokens, 8, 16, 3, 11, 2 * rank, 2);
    ASSERT_EQ(part.inputs.shape(), (Shape{2, 16}));
    for (int64_t x : part.inputs.to_int_vector()) inputs.push_back(x);
    for (int64_t x : part.targets.to_int_vector()) targets.push_back(x);
    offsets.insert(offsets.end(), part.offsets.begin(), part.offsets.end());
  }
  EXPECT_EQ(inputs, whole.inputs.to_int_vector());
  EXPECT_EQ(targets, whole.targets.to_int_vector());
  EXPECT_EQ(offsets, whole.offsets);
  EXPECT_THROW(sample_batch_rows(tokens, 8, 16, 3, 11, 7, 2), ValueError);
  EXPECT_THROW(sample_batch_rows(tokens, 8, 16, 3, 11, -1, 2), ValueError);
  EXPECT_THROW(sample_batch_rows(tokens, 8, 16, 3, 11, 0, 0), ValueError);
}

TEST(EvalWindows, CoverEveryTargetOnce) {
  for (int64_t n : {2, 11, 12, 100, 1001}) {
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = i % 256;
    Tensor tokens = Tensor::from_vector(ids, {n});
    for (int64_t batch_size : {1, 3}) {
      EvalWindows w(TokenSource(tokens), 10, batch_size);
      std::vector<int64_t> inputs, targets;
      for (int64_t i = 0; i < w.num_batches(); ++i) {
        Batch b = w.batch(i);
        for (int64_t v : b.inputs.to_int_vector()) inputs.push_back(v);
        for (int64_t v : b.targets.to_int_vector()) targets.push_back(v);
      }
      EXPECT_EQ(w.num_targets(), n - 1);
      EXPECT_EQ(inputs, std::vector<int64_t>(ids.begin(), ids.end() - 1)) << n << " " << batch_size;
      EXPECT_EQ(targets, std::vector<int64_t>(ids.begin() + 1, ids.end())) << n << " " << batch_size;
      EXPECT_THROW(w.batch(w.num_batches()), IndexError);
    }
  }
  EXPECT_THROW(EvalWindows(TokenSource(Tensor::zeros({1}, DType::Int64)), 4), ValueError);
  EXPECT_THROW(TokenSource(Tensor::zeros({4})), ShapeError);
}

}  // namespace
}  // namespace eformer::data
