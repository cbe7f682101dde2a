// libFuzzer target: the corpus loader on arbitrary text. Invalid UTF-8 or an empty text is a
// ValueError; a corpus's splits tile the text on character boundaries.
#include <cstdint>
#include <string>

#include "eformer/data/corpus.h"
#include "eformer/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace eformer;
  try {
    data::Corpus c = data::Corpus::from_text(std::string(reinterpret_cast<const char*>(data), size));
    int64_t end = 0;
    for (data::Split s : {data::Split::Train, data::Split::Valid, data::Split::Test}) {
      if (c.split_begin(s) != end || c.split_end(s) < c.split_begin(s)) __builtin_trap();
      if (data::utf8_invalid_offset(c.split_text(s)) != -1) __builtin_trap();  // cut on boundaries
      end = c.split_end(s);
    }
    if (end != c.size()) __builtin_trap();
    c.check_context(int64_t(size % 64) + 1);
  } catch (const Error&) {
  }
  return 0;
}
