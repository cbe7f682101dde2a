#include "eformer/io/checksum.h"

#include <cstdio>
#include <cstring>

namespace eformer::io {
namespace {

constexpr uint64_t kP1 = 0x9E3779B97F4A7C15ull;  // odd: multiplication by it is a bijection
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t fold(uint64_t lane, uint64_t word) { return rotl((lane ^ word) * kP1, 31) * kP2; }

uint64_t splitmix_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t load_word(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);  // little-endian hosts only (x86-64), as the safetensors code
  return w;
}

}  // namespace

uint64_t checksum64(const void* data, size_t size) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {kP1, kP2, kP1 ^ kP2, ~kP1};
  size_t i = 0;
  for (; i + 32 <= size; i += 32)
    for (int l = 0; l < 4; ++l) lane[l] = fold(lane[l], load_word(p + i + 8 * l));
  for (int l = 0; i + 8 <= size; i += 8, ++l) lane[l] = fold(lane[l], load_word(p + i));
  uint64_t tail = 0;
  if (size > i) std::memcpy(&tail, p + i, size - i);  // fewer than 8 bytes, zero-padded
  uint64_t h = fold(uint64_t(size), tail);
  for (int l = 0; l < 4; ++l) h = fold(h, lane[l]);
  return splitmix_finalize(h);
}

std::string checksum_hex(const void* data, size_t size) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)checksum64(data, size));
  return buf;
}

}  // namespace eformer::io
