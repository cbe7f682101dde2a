// libFuzzer target: the tokenizer's streaming UTF-8 decoder. Byte by byte or all at once, the text
// is the same, it is valid UTF-8, and at most 3 bytes are ever held back.
#include <cstdint>
#include <string>
#include <string_view>

#include "eformer/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace eformer::data;
  Utf8StreamDecoder one, all;
  std::string by_byte;
  for (size_t i = 0; i < size; ++i) {
    by_byte += one.push(data[i]);
    if (one.pending() < 0 || one.pending() > 3) __builtin_trap();
  }
  by_byte += one.flush();
  std::string at_once = all.push_bytes(std::string_view(reinterpret_cast<const char*>(data), size)) + all.flush();
  if (by_byte != at_once) __builtin_trap();
  if (utf8_invalid_offset(by_byte) != -1) __builtin_trap();
  if (utf8_invalid_offset(std::string_view(reinterpret_cast<const char*>(data), size)) == -1 &&
      by_byte != std::string(reinterpret_cast<const char*>(data), size))
    __builtin_trap();  // valid input passes through unchanged
  return 0;
}
