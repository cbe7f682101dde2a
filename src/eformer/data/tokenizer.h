// The byte-level tokenizer: the vocabulary is the 256 byte values and a token is a byte, so any
// text (any bytes) encodes losslessly and no vocabulary file exists. Plus strict UTF-8 checks and a
// streaming decoder that prints generated tokens without ever splitting a character.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer::data {

class ByteTokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  int64_t vocab_size() const { return kVocabSize; }

  // Token i is the value of byte i of `text` (0..255).
  std::vector<int64_t> encode(std::string_view text) const;
  // The same ids as an Int64 tensor of shape [text.size()].
  Tensor encode_tensor(std::string_view text) const;
  // The bytes of `ids`; an id outside [0, 255] is an IndexError naming the id and its position.
  std::string decode(const std::vector<int64_t>& ids) const;
  // `ids`: an Int64 tensor of rank 0 or 1 (ShapeError otherwise).
  std::string decode(const Tensor& ids) const;
};

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates (U+D800..U+DFFF), nothing above
// U+10FFFF, no truncated sequence at the end. Returns the offset of the first byte of the first
// invalid sequence, or -1 when `bytes` is valid.
int64_t utf8_invalid_offset(std::string_view bytes);

// Turns a stream of byte tokens into printable text: push() returns only complete UTF-8
// characters and holds back the bytes of a character that is still incomplete. Bytes that cannot
// be part of a valid character become U+FFFD, one per maximal invalid subpart (the Unicode and
// WHATWG policy, the same as Python's bytes.decode("utf-8", errors="replace")), so
// concat(push(...)...) + flush() == decode-with-replacement of all the bytes.
class Utf8StreamDecoder {
 public:
  // Adds one token (IndexError outside [0, 255]) and returns the text completed by it.
  std::string push(int64_t id);
  // Adds several bytes and returns the text completed by them.
  std::string push_bytes(std::string_view bytes);
  // Ends the stream: an incomplete character still held back becomes U+FFFD.
  std::string flush();
  // How many bytes are held back (0..3).
  int pending() const { return held_; }

 private:
  void push_byte(uint8_t b, std::string& out);
  uint8_t buf_[4] = {};
  int held_ = 0;  // bytes held of the current character
  int need_ = 0;  // its total length (2..4) while held_ > 0
};

}  // namespace eformer::data
