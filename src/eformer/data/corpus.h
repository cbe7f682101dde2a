// A corpus: the bytes of a UTF-8 text (one byte = one token, see tokenizer.h) and its
// deterministic train / valid / test splits.
//
// Splits are contiguous byte ranges in that order. For n bytes and fractions (valid f_v, test
// f_t; train is the rest), each fraction is rounded to millionths p = round(f * 10^6) and
//   valid_begin = floor(n * (10^6 - p_v - p_t) / 10^6),  test_begin = floor(n * (10^6 - p_t) / 10^6),
// then each boundary moves forward past any UTF-8 continuation bytes (at most 3) so that every
// split starts on a character. train = [0, valid_begin), valid = [valid_begin, test_begin),
// test = [test_begin, n): every byte is in exactly one split. Default 90 / 5 / 5; for
// data/kjv.txt (4,236,034 bytes): train [0, 3812430), valid [3812430, 4024232), test [4024232, n).
//
// Loading (Corpus::from_path): a file is read whole. A folder contributes every regular file (or
// link to one) below it, recursively (links to folders are not followed), skipping hidden files and
// folders (names starting with '.'), sorted by their path relative to the folder (byte-wise, '/'
// separated) and joined with a single '\n' between consecutive files. Each file must be valid UTF-8
// (IOError naming the file and the byte offset); a missing path is an IOError naming it; no text
// at all (an empty file, a folder with no files or only empty ones) is a ValueError.
//
// A corpus of records (Corpus::from_records; e.g. fashion_mnist.h's images) is instead a sequence
// of fixed-length records of any bytes, split at record boundaries (the last records are test, those
// before them valid). Its training windows and evaluation windows are whole records (batches.h), so
// a model's context must be record_length - 1; its unit is the caller's ("dim" for pixels).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "eformer/core/tensor.h"

namespace eformer::data {

enum class Split : uint8_t { Train, Valid, Test };
const char* split_name(Split split);  // "train", "valid", "test"
// "train", "valid" (or "validation"), "test"; ValueError listing the valid names otherwise.
Split parse_split(std::string_view name);

struct SplitFractions {
  double valid = 0.05;
  double test = 0.05;
};

class Corpus {
 public:
  // `text` must be valid UTF-8 and non-empty; `source` names it in messages.
  static Corpus from_text(std::string text, std::string source = "<text>", SplitFractions fractions = {});
  // A UTF-8 text file or a folder of them (see the rules above).
  static Corpus from_path(const std::string& path, SplitFractions fractions = {});
  // The corpus at default_corpus_path().
  static Corpus default_corpus(SplitFractions fractions = {});
  // `bytes` holds whole records of `record_length` (>= 2) bytes; the last `test_records` are the
  // test split, the `valid_records` before them valid, the rest (at least one) train. ValueError
  // on sizes that do not fit. `unit` names what a token is in reports ("bits per <unit>").
  static Corpus from_records(std::string bytes, int64_t record_length, int64_t valid_records, int64_t test_records,
                             std::string source, std::string unit);

  const std::string& source() const { return *source_; }
  std::string_view text() const { return *text_; }
  int64_t size() const { return int64_t(text_->size()); }
  // 0 for a text; the record length of a corpus of records.
  int64_t record_length() const { return record_length_; }
  // "char" for a text; a corpus of records' own (e.g. "dim").
  const std::string& unit() const { return *unit_; }

  int64_t split_begin(Split split) const;
  int64_t split_end(Split split) const;
  int64_t split_size(Split split) const { return split_end(split) - split_begin(split); }
  std::string_view split_text(Split split) const;
  const uint8_t* split_data(Split split) const;
  // The split's tokens as a fresh Int64 tensor [split_size].
  Tensor split_tokens(Split split) const;

  // ValueError naming the sizes when some split is too small for windows of `context` inputs
  // (a training window needs context + 1 tokens); for records, unless context = record_length - 1.
  void check_context(int64_t context) const;

 private:
  Corpus() = default;
  std::shared_ptr<const std::string> text_;  // shared: copies of a Corpus and its batchers are cheap
  std::shared_ptr<const std::string> source_;
  std::shared_ptr<const std::string> unit_;
  int64_t valid_begin_ = 0, test_begin_ = 0;
  int64_t record_length_ = 0;
};

// Where the default corpus lives: $EFORMER_DATA (a text file or folder) when set and non-empty,
// else data/kjv.txt in the resource folder (io/resources.h: the installed share/eformer, or a build
// folder's link to the source tree's data/, where scripts/prepare-data.sh extracts the King James
// Bible). IOError naming where it looked, when neither exists.
std::string default_corpus_path();

}  // namespace eformer::data
