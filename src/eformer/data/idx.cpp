#include "eformer/data/idx.h"

#include "eformer/core/error.h"
#include "eformer/io/atomic_file.h"

namespace eformer::data {

IdxArray parse_idx(const std::string& bytes, const std::string& source) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  EF_CHECK(!(n >= 2 && b[0] == 0x1f && b[1] == 0x8b), IOError, "idx: '", source,
           "' is gzip-compressed; decompress it first (scripts/prepare-data.sh does, into data/fashion-mnist/)");
  EF_CHECK(n >= 4, IOError, "idx: '", source, "' is truncated: ", n, " bytes, shorter than the 4-byte magic number");
  EF_CHECK(b[0] == 0 && b[1] == 0, IOError, "idx: '", source, "' has a bad magic number (first bytes ", int(b[0]),
           ", ", int(b[1]), "; an idx file starts with 0, 0)");
  EF_CHECK(b[2] == 0x08, IOError, "idx: '", source, "' holds element type 0x", "0123456789abcdef"[b[2] >> 4],
           "0123456789abcdef"[b[2] & 15], "; only unsigned bytes (0x08) are read");
  const int rank = b[3];
  EF_CHECK(rank >= 1 && rank <= 4, IOError, "idx: '", source, "' declares ", rank, " dimensions; expected 1 to 4");
  const size_t header = 4 + 4 * size_t(rank);
  EF_CHECK(n >= header, IOError, "idx: '", source, "' is truncated: ", n, " bytes, shorter than its ", header,
           "-byte header");
  IdxArray a;
  uint64_t count = 1;
  for (int d = 0; d < rank; ++d) {
    const uint8_t* s = b + 4 + 4 * d;
    const uint64_t size = uint64_t(s[0]) << 24 | uint64_t(s[1]) << 16 | uint64_t(s[2]) << 8 | uint64_t(s[3]);
    EF_CHECK(size > 0, IOError, "idx: '", source, "' has size 0 in dimension ", d);
    count *= size;  // at most (2^32)^4 would overflow; sizes are checked against the file length first
    EF_CHECK(count <= n, IOError, "idx: '", source, "' is truncated: its sizes need more than its ", n, " bytes");
    a.shape.push_back(int64_t(size));
  }
  EF_CHECK(n - header == count, IOError, "idx: '", source, "' is ", n - header < count ? "truncated" : "too long",
           ": its sizes need ", count, " bytes after the ", header, "-byte header, the file has ", n - header);
  a.data.assign(b + header, b + n);
  return a;
}

IdxArray read_idx(const std::string& path) { return parse_idx(io::read_file(path), path); }

}  // namespace eformer::data
