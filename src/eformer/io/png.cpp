#include "eformer/io/png.h"

#include <algorithm>
#include <array>

#include "eformer/core/error.h"
#include "eformer/io/atomic_file.h"

namespace eformer::io {
namespace {

constexpr char kSignature[] = "\x89PNG\r\n\x1a\n";
constexpr size_t kStoredBlock = 65535;  // the most bytes a stored deflate block holds

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;  // reflected polynomial
      t[n] = c;
    }
    return t;
  }();
  return table;
}

void put_u32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(char((v >> s) & 0xFF));
}

uint32_t get_u32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, uint32_t(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  put_u32(out, crc32(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n) {
  const auto& t = crc_table();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = t[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t adler32(const uint8_t* data, size_t n) {
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < n; ++i) {
    a = (a + data[i]) % 65521;
    b = (b + a) % 65521;
  }
  return b << 16 | a;
}

std::string encode_png(const GreyImage& img) {
  EF_CHECK(img.width >= 1 && img.height >= 1 && img.width <= 65536 && img.height <= 65536, ValueError,
           "png: image size ", img.width, " x ", img.height, " is outside 1 .. 65536");
  EF_CHECK(int64_t(img.pixels.size()) == img.width * img.height, ValueError, "png: ", img.pixels.size(),
           " pixels for a ", img.width, " x ", img.height, " image");
  // Raw scanlines: filter byte 0, then the row.
  std::string raw;
  for (int64_t y = 0; y < img.height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(img.pixels.data() + y * img.width), size_t(img.width));
  }
  // zlib stream: CMF 0x78 (deflate, 32K window), FLG 0x01 (check bits: 0x7801 % 31 == 0), stored blocks.
  std::string z = {'\x78', '\x01'};
  for (size_t at = 0; at < raw.size(); at += kStoredBlock) {
    const size_t len = std::min(kStoredBlock, raw.size() - at);
    z.push_back(at + len == raw.size() ? '\x01' : '\x00');  // BFINAL, BTYPE = 00 (stored)
    z.push_back(char(len & 0xFF)), z.push_back(char(len >> 8));
    z.push_back(char(~len & 0xFF)), z.push_back(char((~len >> 8) & 0xFF));
    z.append(raw, at, len);
  }
  put_u32(z, adler32(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()));

  std::string out(kSignature, 8), ihdr;
  put_u32(ihdr, uint32_t(img.width));
  put_u32(ihdr, uint32_t(img.height));
  ihdr += std::string("\x08\x00\x00\x00\x00", 5);  // bit depth 8, colour type 0 (grey), deflate, filter 0, no interlace
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", z);
  put_chunk(out, "IEND", "");
  return out;
}

void write_png(const std::string& path, const GreyImage& image) { write_file_atomic(path, encode_png(image)); }

GreyImage decode_png(const std::string& bytes, const std::string& source) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  EF_CHECK(n >= 8 && bytes.compare(0, 8, kSignature, 8) == 0, IOError, "png: '", source, "' has no PNG signature");
  GreyImage img;
  std::string z;
  bool ended = false;
  for (size_t at = 8; !ended;) {
    EF_CHECK(at + 12 <= n, IOError, "png: '", source, "' is truncated at byte ", at);
    const uint32_t len = get_u32(b + at);
    EF_CHECK(len <= n - at - 12, IOError, "png: '", source, "' is truncated: a chunk of ", len, " bytes at byte ", at);
    const std::string type = bytes.substr(at + 4, 4);
    EF_CHECK(crc32(b + at + 4, len + 4) == get_u32(b + at + 8 + len), IOError, "png: '", source,
             "': CRC mismatch in the ", type, " chunk at byte ", at);
    const uint8_t* data = b + at + 8;
    if (type == "IHDR") {
      EF_CHECK(len == 13, IOError, "png: '", source, "': IHDR of ", len, " bytes");
      img.width = get_u32(data), img.height = get_u32(data + 4);
      EF_CHECK(data[8] == 8 && data[9] == 0 && data[12] == 0, IOError, "png: '", source,
               "' is not 8-bit grey without interlacing (depth ", int(data[8]), ", colour type ", int(data[9]),
               ", interlace ", int(data[12]), ")");
      EF_CHECK(img.width >= 1 && img.height >= 1 && img.width <= 65536 && img.height <= 65536, IOError, "png: '",
               source, "': size ", img.width, " x ", img.height);
    } else if (type == "IDAT") {
      z.append(bytes, at + 8, len);
    } else if (type == "IEND") {
      ended = true;
    }
    at += 12 + len;
  }
  EF_CHECK(img.width > 0, IOError, "png: '", source, "' has no IHDR chunk");
  EF_CHECK(z.size() >= 6 && uint8_t(z[0]) == 0x78 && (uint8_t(z[0]) * 256 + uint8_t(z[1])) % 31 == 0, IOError,
           "png: '", source, "': the image data is not a zlib stream");
  std::string raw;
  size_t at = 2;
  for (bool final_block = false; !final_block;) {
    EF_CHECK(at + 5 <= z.size(), IOError, "png: '", source, "': the image data is truncated");
    const uint8_t header = uint8_t(z[at]);
    final_block = header & 1;
    EF_CHECK((header >> 1 & 3) == 0, IOError, "png: '", source,
             "' uses compressed deflate blocks; only stored blocks are read (as written by encode_png)");
    const size_t len = uint8_t(z[at + 1]) | size_t(uint8_t(z[at + 2])) << 8;
    const size_t nlen = uint8_t(z[at + 3]) | size_t(uint8_t(z[at + 4])) << 8;
    EF_CHECK((len ^ nlen) == 0xFFFF, IOError, "png: '", source, "': a stored block's length check fails");
    EF_CHECK(at + 5 + len <= z.size(), IOError, "png: '", source, "': the image data is truncated");
    raw.append(z, at + 5, len);
    at += 5 + len;
  }
  EF_CHECK(at + 4 <= z.size() && get_u32(reinterpret_cast<const uint8_t*>(z.data()) + at) ==
                                     adler32(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()),
           IOError, "png: '", source, "': Adler-32 mismatch in the image data");
  EF_CHECK(raw.size() == size_t(img.height * (img.width + 1)), IOError, "png: '", source, "': ", raw.size(),
           " bytes of image data for ", img.width, " x ", img.height);
  img.pixels.resize(size_t(img.width * img.height));
  for (int64_t y = 0; y < img.height; ++y) {
    EF_CHECK(raw[size_t(y * (img.width + 1))] == 0, IOError, "png: '", source, "': row ", y, " uses filter type ",
             int(uint8_t(raw[size_t(y * (img.width + 1))])), "; only 0 is read");
    std::copy(raw.begin() + y * (img.width + 1) + 1, raw.begin() + (y + 1) * (img.width + 1),
              img.pixels.begin() + y * img.width);
  }
  return img;
}

}  // namespace eformer::io
