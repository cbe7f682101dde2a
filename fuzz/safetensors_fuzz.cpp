// libFuzzer target: the safetensors reader on arbitrary bytes. Any input is a file or an IOError
// (ShapeError/ValueError for a valid file the engine cannot hold); a parsed file re-serializes and
// parses back to the same tensors.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "eformer/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace eformer;
  try {
    io::SafetensorsFile f = io::parse_safetensors(std::string_view(reinterpret_cast<const char*>(data), size));
    std::vector<std::pair<std::string, Tensor>> tensors(f.tensors.begin(), f.tensors.end());
    io::SafetensorsFile again = io::parse_safetensors(io::serialize_safetensors(tensors, f.metadata));
    if (again.tensors.size() != f.tensors.size()) __builtin_trap();
    for (const auto& [name, t] : f.tensors) {
      const Tensor& u = again.get(name);
      if (u.shape() != t.shape() || u.dtype() != t.dtype() ||
          std::memcmp(u.raw_data(), t.raw_data(), size_t(t.numel()) * dtype_size(t.dtype())) != 0)
        __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}
