#include "eformer/data/corpus.h"

#include "eformer/io/resources.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "eformer/data/tokenizer.h"
#include "eformer/io/atomic_file.h"

namespace eformer::data {

namespace {

namespace fs = std::filesystem;

std::string read_utf8_file(const fs::path& path) {
  std::string text = io::read_file(path.string());
  int64_t bad = utf8_invalid_offset(text);
  EF_CHECK(bad < 0, IOError, "Corpus: '", path.string(), "' is not valid UTF-8 at byte offset ", bad,
           " (byte 0x", "0123456789abcdef"[uint8_t(text[size_t(bad)]) >> 4],
           "0123456789abcdef"[uint8_t(text[size_t(bad)]) & 15], ")");
  return text;
}

bool is_hidden(const fs::path& p) {
  std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// Every regular, non-hidden file below `root`, sorted by the path relative to it.
std::vector<fs::path> folder_files(const fs::path& root) {
  std::vector<std::pair<std::string, fs::path>> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::none, ec), end;
  EF_CHECK(!ec, IOError, "Corpus: cannot list folder '", root.string(), "': ", ec.message());
  for (; it != end; it.increment(ec)) {
    EF_CHECK(!ec, IOError, "Corpus: cannot list folder '", root.string(), "': ", ec.message());
    const fs::path& p = it->path();
    if (is_hidden(p)) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec)) files.emplace_back(p.lexically_relative(root).generic_string(), p);
  }
  EF_CHECK(!ec, IOError, "Corpus: cannot list folder '", root.string(), "': ", ec.message());
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<fs::path> out;
  for (auto& f : files) out.push_back(std::move(f.second));
  return out;
}

// A fraction in [0, 1) as an integer number of millionths.
int64_t millionths(double f, const char* what) {
  EF_CHECK(std::isfinite(f) && f >= 0.0 && f < 1.0, ValueError, "Corpus: the ", what,
           " fraction must be in [0, 1), got ", f);
  return int64_t(std::llround(f * 1e6));
}

}  // namespace

const char* split_name(Split split) {
  switch (split) {
    case Split::Train:
      return "train";
    case Split::Valid:
      return "valid";
    case Split::Test:
      return "test";
  }
  return "?";
}

Split parse_split(std::string_view name) {
  if (name == "train") return Split::Train;
  if (name == "valid" || name == "validation") return Split::Valid;
  if (name == "test") return Split::Test;
  throw ValueError(detail::concat("unknown split '", name, "'; expected one of: train, valid, test"));
}

Corpus Corpus::from_text(std::string text, std::string source, SplitFractions fractions) {
  int64_t bad = utf8_invalid_offset(text);
  EF_CHECK(bad < 0, IOError, "Corpus: '", source, "' is not valid UTF-8 at byte offset ", bad);
  EF_CHECK(!text.empty(), ValueError, "Corpus: '", source, "' is empty; a corpus needs at least one byte");
  const int64_t p_valid = millionths(fractions.valid, "valid"), p_test = millionths(fractions.test, "test");
  EF_CHECK(p_valid + p_test < 1000000, ValueError, "Corpus: valid (", fractions.valid, ") + test (",
           fractions.test, ") fractions leave nothing for train");
  const int64_t n = int64_t(text.size());
  auto boundary = [&](int64_t keep_millionths) {
    int64_t b = int64_t((__int128(n) * keep_millionths) / 1000000);
    while (b < n && (uint8_t(text[size_t(b)]) & 0xC0) == 0x80) ++b;  // onto a character start
    return b;
  };
  Corpus c;
  c.valid_begin_ = boundary(1000000 - p_valid - p_test);
  c.test_begin_ = std::max(c.valid_begin_, boundary(1000000 - p_test));
  c.text_ = std::make_shared<const std::string>(std::move(text));
  c.source_ = std::make_shared<const std::string>(std::move(source));
  c.unit_ = std::make_shared<const std::string>("char");
  return c;
}

Corpus Corpus::from_records(std::string bytes, int64_t record_length, int64_t valid_records, int64_t test_records,
                            std::string source, std::string unit) {
  EF_CHECK(record_length >= 2, ValueError, "Corpus '", source, "': record_length must be >= 2, got ", record_length);
  const int64_t n = int64_t(bytes.size());
  EF_CHECK(n % record_length == 0, ValueError, "Corpus '", source, "': ", n, " bytes are not whole records of ",
           record_length);
  const int64_t records = n / record_length;
  EF_CHECK(valid_records >= 1 && test_records >= 1 && valid_records + test_records < records, ValueError,
           "Corpus '", source, "': ", records, " records cannot hold ", valid_records, " valid and ", test_records,
           " test records (each at least 1) and a train split");
  Corpus c;
  c.valid_begin_ = (records - valid_records - test_records) * record_length;
  c.test_begin_ = (records - test_records) * record_length;
  c.record_length_ = record_length;
  c.text_ = std::make_shared<const std::string>(std::move(bytes));
  c.source_ = std::make_shared<const std::string>(std::move(source));
  c.unit_ = std::make_shared<const std::string>(std::move(unit));
  return c;
}

Corpus Corpus::from_path(const std::string& path, SplitFractions fractions) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  EF_CHECK(fs::exists(st), IOError, "Corpus: '", path, "' does not exist");
  if (!fs::is_directory(st)) return from_text(read_utf8_file(path), path, fractions);
  std::vector<fs::path> files = folder_files(path);
  EF_CHECK(!files.empty(), ValueError, "Corpus: folder '", path,
           "' holds no (non-hidden) files; a corpus needs at least one byte");
  std::string text;
  for (size_t i = 0; i < files.size(); ++i) {
    if (i > 0) text.push_back('\n');
    text += read_utf8_file(files[i]);
  }
  // Separators alone are no text.
  EF_CHECK(text.size() > files.size() - 1, ValueError, "Corpus: folder '", path, "' holds ", files.size(),
           " files, all empty; a corpus needs at least one byte");
  return from_text(std::move(text), path, fractions);
}

Corpus Corpus::default_corpus(SplitFractions fractions) {
  return from_path(default_corpus_path(), fractions);
}

int64_t Corpus::split_begin(Split split) const {
  switch (split) {
    case Split::Train:
      return 0;
    case Split::Valid:
      return valid_begin_;
    case Split::Test:
      return test_begin_;
  }
  return 0;
}

int64_t Corpus::split_end(Split split) const {
  switch (split) {
    case Split::Train:
      return valid_begin_;
    case Split::Valid:
      return test_begin_;
    case Split::Test:
      return size();
  }
  return 0;
}

std::string_view Corpus::split_text(Split split) const {
  return std::string_view(*text_).substr(size_t(split_begin(split)), size_t(split_size(split)));
}

const uint8_t* Corpus::split_data(Split split) const {
  return reinterpret_cast<const uint8_t*>(text_->data()) + split_begin(split);
}

Tensor Corpus::split_tokens(Split split) const { return ByteTokenizer().encode_tensor(split_text(split)); }

void Corpus::check_context(int64_t context) const {
  EF_CHECK(context >= 1, ValueError, "Corpus: context must be >= 1, got ", context);
  EF_CHECK(record_length_ == 0 || context == record_length_ - 1, ValueError, "Corpus '", source(), "': its records are ",
           record_length_, " tokens (a start token and ", record_length_ - 1, " to predict), so the model's context "
           "(max_len) must be ", record_length_ - 1, ", got ", context, " (e.g. --set model.max_len=",
           record_length_ - 1, ")");
  for (Split s : {Split::Train, Split::Valid, Split::Test}) {
    EF_CHECK(split_size(s) >= context + 1, ValueError, "Corpus '", source(), "': the ", split_name(s),
             " split has ", split_size(s), " tokens (of ", size(), "); context ", context, " needs at least ",
             context + 1, " per split");
  }
}

std::string default_corpus_path() {
  const char* env = std::getenv("EFORMER_DATA");
  if (env != nullptr && env[0] != '\0') {
    EF_CHECK(fs::exists(env), IOError, "default corpus: EFORMER_DATA='", env,
             "' does not exist; point it at a UTF-8 text file, or unset it to use the installed data/kjv.txt");
    return env;
  }
  std::string path = io::find_resource("data/kjv.txt");
  EF_CHECK(!path.empty(), IOError, "default corpus: data/kjv.txt not found; looked in ",
           io::resource_search_description(),
           ". In a source checkout run scripts/prepare-data.sh to extract it; elsewhere set EFORMER_DATA to a "
           "UTF-8 text file");
  return path;
}

}  // namespace eformer::data
