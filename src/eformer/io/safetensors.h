// The safetensors format (https://github.com/huggingface/safetensors), read and written here:
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   a JSON object {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//             ..., "__metadata__": {"<key>": "<value>"}} (optional metadata, strings only),
//             padded with spaces to a multiple of 8
//   the rest  the byte buffer; offsets are relative to its start, tensors are row-major little-endian.
// Like the reference implementation, the writer orders tensors by dtype alignment (largest first),
// then by name, packed without gaps; the reader requires the ranges to tile the buffer exactly.
// Supported dtypes: F32, I64 and BOOL (bytes 0/1). Any malformed input is an IOError naming the
// source and the problem, never an out-of-bounds read.
#pragma once
#include <concepts>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer::io {

// Headers longer than this are rejected (the reference implementation's limit).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct SafetensorsFile {
  std::string source;                           // the path, or "<memory>", for messages
  std::map<std::string, Tensor> tensors;        // by name
  std::map<std::string, std::string> metadata;  // the "__metadata__" entry

  bool contains(const std::string& name) const { return tensors.count(name) > 0; }
  // The named tensor; IOError naming the source and listing the available names when absent.
  const Tensor& get(const std::string& name) const;
  // Also checks the shape: ShapeError naming the tensor, the expected and the found shape.
  const Tensor& get(const std::string& name, const Shape& expected_shape) const;
};

// Encodes tensors (any layout; written contiguous) and metadata as a safetensors byte string.
// ValueError on an empty, duplicate or reserved ("__metadata__") name, an undefined tensor or an
// unsupported dtype.
std::string serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// Writes a safetensors file atomically (see atomic_file.h); same checks as serialize_safetensors,
// all made before anything touches the disk.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Any map of name -> Tensor (std::map, std::unordered_map); the file's order does not depend on it.
template <class Map>
requires requires(const Map& m) {
  { m.begin()->first } -> std::convertible_to<std::string>;
  { m.begin()->second } -> std::convertible_to<Tensor>;
}
void save_safetensors(const std::string& path, const Map& tensors,
                      const std::map<std::string, std::string>& metadata = {}) {
  save_safetensors(path, std::vector<std::pair<std::string, Tensor>>(tensors.begin(), tensors.end()),
                   metadata);
}

// Parses and validates a whole file held in memory; `source` names it in error messages.
SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source = "<memory>");
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace eformer::io
