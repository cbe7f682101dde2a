// A 64-bit checksum of a byte range, to detect corrupt files (flipped bits, torn writes), not
// tampering. Our own construction: the bytes as little-endian 64-bit words dealt round-robin to
// four lanes, each folded as lane = rotl((lane ^ word) * P1, 31) * P2; for a fixed word that is a
// bijection of the lane, and for a fixed lane a bijection of the word, so a change in any one word
// always changes its lane's final value. The lanes, the tail bytes and the length are then combined
// and passed through splitmix64's finalizer. About 8 bytes per cycle.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace eformer::io {

uint64_t checksum64(const void* data, size_t size);
// As 16 lowercase hex digits.
std::string checksum_hex(const void* data, size_t size);

}  // namespace eformer::io
