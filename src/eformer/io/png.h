// 8-bit greyscale PNG files (the PNG specification, ISO/IEC 15948), written with no compression
// library: the image data is a zlib stream (RFC 1950) of stored, uncompressed deflate blocks
// (RFC 1951 sec. 3.2.4), each row prefixed with filter type 0; chunks carry their CRC-32.
// The reader reads back exactly that kind of file (it is there for tests and round trips): grey,
// 8-bit, non-interlaced, filter type 0, stored blocks; anything else is an IOError naming it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace eformer::io {

struct GreyImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height * width, row-major
};

// CRC-32 (ISO 3309, as PNG and gzip use it) and Adler-32 (RFC 1950) of `n` bytes.
uint32_t crc32(const uint8_t* data, size_t n);
uint32_t adler32(const uint8_t* data, size_t n);

// The bytes of a PNG file; ValueError unless 1 <= width, height <= 2^16 and pixels has width * height.
std::string encode_png(const GreyImage& image);
// Writes it atomically (atomic_file.h).
void write_png(const std::string& path, const GreyImage& image);
// IOError (naming `source`) on a bad signature, a chunk CRC mismatch, a truncated file, or a
// feature outside those above.
GreyImage decode_png(const std::string& bytes, const std::string& source = "<png>");

}  // namespace eformer::io
