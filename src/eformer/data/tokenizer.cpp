#include "eformer/data/tokenizer.h"

namespace eformer::data {

namespace {

// Length of the UTF-8 sequence that `lead` starts (1..4), or 0 when it cannot start one
// (a continuation byte 80..BF, the overlong leads C0/C1, or F5..FF beyond U+10FFFF).
int utf8_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow `lead` as the byte at `position` (1..3) of its sequence. The second
// byte's range is narrower after E0 (overlong), ED (surrogates), F0 (overlong) and F4 (> U+10FFFF).
bool utf8_continues(uint8_t lead, int position, uint8_t b) {
  uint8_t lo = 0x80, hi = 0xBF;
  if (position == 1) {
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  }
  return b >= lo && b <= hi;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

uint8_t checked_byte(int64_t id, size_t position) {
  EF_CHECK(id >= 0 && id < ByteTokenizer::kVocabSize, IndexError, "ByteTokenizer.decode: id ", id,
           " at position ", position, " is outside the byte vocabulary [0, 255]");
  return uint8_t(id);
}

}  // namespace

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = uint8_t(text[i]);
  return ids;
}

Tensor ByteTokenizer::encode_tensor(std::string_view text) const {
  Tensor t = Tensor::empty({int64_t(text.size())}, DType::Int64);
  int64_t* out = t.data<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) out[i] = uint8_t(text[i]);
  return t;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) out[i] = char(checked_byte(ids[i], i));
  return out;
}

std::string ByteTokenizer::decode(const Tensor& ids) const {
  EF_CHECK(ids.dtype() == DType::Int64, ShapeError, "ByteTokenizer.decode: ids must be int64, got ",
           ids.describe());
  EF_CHECK(ids.dim() <= 1, ShapeError, "ByteTokenizer.decode: ids must be a 1-D sequence, got ",
           ids.describe());
  Tensor c = ids.contiguous_data();
  const int64_t* p = c.data<int64_t>();
  std::string out(size_t(c.numel()), '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = char(checked_byte(p[i], i));
  return out;
}

int64_t utf8_invalid_offset(std::string_view bytes) {
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    uint8_t lead = uint8_t(bytes[i]);
    if (lead < 0x80) {  // the common case: ASCII
      ++i;
      continue;
    }
    int len = utf8_length(lead);
    if (len == 0 || i + size_t(len) > n) return int64_t(i);
    for (int j = 1; j < len; ++j)
      if (!utf8_continues(lead, j, uint8_t(bytes[i + size_t(j)]))) return int64_t(i);
    i += size_t(len);
  }
  return -1;
}

void Utf8StreamDecoder::push_byte(uint8_t b, std::string& out) {
  if (held_ > 0) {
    if (utf8_continues(buf_[0], held_, b)) {
      buf_[held_++] = b;
      if (held_ == need_) {
        out.append(reinterpret_cast<const char*>(buf_), size_t(held_));
        held_ = need_ = 0;
      }
      return;
    }
    // The held bytes are a maximal invalid subpart; `b` starts afresh.
    out.append(kReplacement);
    held_ = need_ = 0;
  }
  int len = utf8_length(b);
  if (len == 1) {
    out.push_back(char(b));
  } else if (len == 0) {
    out.append(kReplacement);
  } else {
    buf_[0] = b;
    held_ = 1;
    need_ = len;
  }
}

std::string Utf8StreamDecoder::push(int64_t id) {
  EF_CHECK(id >= 0 && id < ByteTokenizer::kVocabSize, IndexError, "Utf8StreamDecoder.push: id ", id,
           " is outside the byte vocabulary [0, 255]");
  std::string out;
  push_byte(uint8_t(id), out);
  return out;
}

std::string Utf8StreamDecoder::push_bytes(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + 3);
  for (char c : bytes) push_byte(uint8_t(c), out);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out;
  if (held_ > 0) out.assign(kReplacement);
  held_ = need_ = 0;
  return out;
}

}  // namespace eformer::data
