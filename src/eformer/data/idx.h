// The idx format of the MNIST family (LeCun et al.; Fashion-MNIST, Xiao et al. 2017 uses it as is):
// a big-endian header, then the array row-major.
//   bytes 0-1: 0, 0;  byte 2: element type (0x08 unsigned byte; only that one is read here);
//   byte 3: the number of dimensions r (1..4); then r big-endian uint32 sizes; then the elements.
// The file must hold exactly header + product(sizes) bytes. Files compressed with gzip (as Debian's
// dataset-fashion-mnist ships them) are recognised and refused with a pointer to
// scripts/prepare-data.sh, which decompresses them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace eformer::data {

struct IdxArray {
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // product(shape) bytes
};

// Parses the bytes of an idx file; `source` names it in messages. IOError on a bad magic number, an
// element type other than unsigned byte, a rank outside 1..4, a zero size, or a length that is not
// header + product(sizes) (truncated or trailing bytes; the message gives both numbers).
IdxArray parse_idx(const std::string& bytes, const std::string& source);
// Reads and parses a file (IOError naming it when it cannot be read).
IdxArray read_idx(const std::string& path);

}  // namespace eformer::data
