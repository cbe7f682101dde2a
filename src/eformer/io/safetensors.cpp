#include "eformer/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "eformer/core/error.h"
#include "eformer/io/atomic_file.h"

namespace eformer::io {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSupported = "F32, I64, BOOL";
// Names the format defines that we do not load (yet).
constexpr const char* kKnownUnsupported[] = {"F64",     "F16",     "BF16",    "I32", "I16",     "I8",
                                             "U8",      "U16",     "U32",     "U64", "F8_E5M2", "F8_E4M3",
                                             "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",  "C64"};

const char* format_dtype(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "F32";
    case DType::Int64:
      return "I64";
    case DType::Bool:
      return "BOOL";
    default:
      return nullptr;
  }
}

[[noreturn]] void corrupt(const std::string& source, const std::string& what) {
  throw IOError("safetensors '" + source + "': " + what);
}

const char* json_type(const json& j) { return j.type_name(); }

// Parser messages quote the offending input; escape bytes that are not printable ASCII so the
// message stays valid UTF-8.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// ---- writing ----

struct Prepared {
  std::string header;                                   // the JSON, padded
  std::vector<std::pair<std::string, Tensor>> tensors;  // contiguous, in data order
};

Prepared prepare(const std::vector<std::pair<std::string, Tensor>>& input,
                 const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  Prepared out;
  for (const auto& [name, t] : input) {
    EF_CHECK(!name.empty(), ValueError, "save_safetensors: a tensor name is empty");
    EF_CHECK(name != kMetadataKey, ValueError, "save_safetensors: '", kMetadataKey,
             "' is reserved for the metadata and cannot name a tensor");
    EF_CHECK(seen.insert(name).second, ValueError, "save_safetensors: duplicate tensor name '", name, "'");
    EF_CHECK(t.defined(), ValueError, "save_safetensors: tensor '", name, "' is undefined");
    EF_CHECK(format_dtype(t.dtype()) != nullptr, ValueError, "save_safetensors: tensor '", name,
             "' has dtype ", dtype_name(t.dtype()),
             ", which cannot be saved; supported: float32, int64, bool");
    out.tensors.emplace_back(name, t.contiguous_data());
  }
  // The reference order: larger element size first (keeps every tensor aligned), then by name.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const auto& a, const auto& b) {
    size_t sa = dtype_size(a.second.dtype()), sb = dtype_size(b.second.dtype());
    return sa != sb ? sa > sb : a.first < b.first;
  });
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : out.tensors) {
    uint64_t bytes = uint64_t(t.numel()) * dtype_size(t.dtype());
    header[name] = {
        {"dtype", format_dtype(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  try {
    out.header = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names are arbitrary bytes; JSON needs UTF-8
    throw ValueError(std::string("save_safetensors: a tensor name or metadata entry is not valid UTF-8: ") +
                     e.what());
  }
  out.header.append((8 - out.header.size() % 8) % 8, ' ');
  return out;
}

void emit(const Prepared& p, const ByteSink& sink) {
  uint64_t n = p.header.size();
  sink(&n, sizeof n);  // little-endian host (asserted above)
  sink(p.header.data(), p.header.size());
  for (const auto& [name, t] : p.tensors) {
    size_t bytes = size_t(t.numel()) * dtype_size(t.dtype());
    if (bytes > 0) sink(t.raw_data(), bytes);
  }
}

// ---- reading ----

// Rejects duplicate keys at any level (nlohmann would silently keep the last) and deep nesting.
struct HeaderScan {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;  // "<key>" or "<key>' in entry '<parent>"
  std::string parent;     // the last top-level key seen
  bool too_deep = false;
};

json parse_header(std::string_view text, const std::string& source) {
  HeaderScan scan;
  json header;
  try {
    header = json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t event, json& parsed) {
      switch (event) {
        case json::parse_event_t::object_start:
        case json::parse_event_t::array_start:
          if (depth >= 8) scan.too_deep = true;
          scan.keys.emplace_back();
          return !scan.too_deep;
        case json::parse_event_t::object_end:
        case json::parse_event_t::array_end:
          if (!scan.keys.empty()) scan.keys.pop_back();
          return true;
        case json::parse_event_t::key: {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (depth == 1) scan.parent = key;
          if (!scan.keys.empty() && !scan.keys.back().insert(key).second && scan.duplicate.empty())
            scan.duplicate = depth == 1 ? key : key + "' in entry '" + scan.parent;
          return true;
        }
        default:
          return true;
      }
    });
  } catch (const json::exception& e) {
    corrupt(source, "the header is not valid JSON: " + printable(e.what()));
  }
  if (scan.too_deep) corrupt(source, "the header nests JSON values more deeply than the format allows");
  if (!scan.duplicate.empty()) corrupt(source, "the header has a duplicate key '" + scan.duplicate + "'");
  if (!header.is_object())
    corrupt(source, std::string("the header is a JSON ") + json_type(header) + ", expected an object");
  return header;
}

uint64_t unsigned_field(const json& v, const std::string& source, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) corrupt(source, what + " is negative (" + v.dump() + ")");
  corrupt(source,
          what + " is a JSON " + json_type(v) + " (" + v.dump() + "), expected a non-negative integer");
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& name, const json& info, uint64_t buffer_size,
                  const std::string& source) {
  const std::string what = "tensor '" + name + "'";
  if (!info.is_object())
    corrupt(source, what + ": the entry is a JSON " + json_type(info) + ", expected an object");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!info.contains(field)) corrupt(source, what + ": the entry has no '" + field + "'");
  Entry e{name, DType::Float32, {}, 0, 0};

  const json& dtype = info["dtype"];
  if (!dtype.is_string())
    corrupt(source, what + ": 'dtype' is a JSON " + json_type(dtype) + ", expected a string");
  const std::string& d = dtype.get_ref<const std::string&>();
  if (d == "F32") {
    e.dtype = DType::Float32;
  } else if (d == "I64") {
    e.dtype = DType::Int64;
  } else if (d == "BOOL") {
    e.dtype = DType::Bool;
  } else {
    bool known = std::find_if(std::begin(kKnownUnsupported), std::end(kKnownUnsupported),
                              [&](const char* k) { return d == k; }) != std::end(kKnownUnsupported);
    corrupt(source, what + (known ? ": unsupported dtype '" : ": unknown dtype '") + d +
                        "'; supported: " + kSupported);
  }

  const json& shape = info["shape"];
  if (!shape.is_array())
    corrupt(source, what + ": 'shape' is a JSON " + json_type(shape) + ", expected an array");
  // numel, and the product of the nonzero sizes (the strides), must both fit in int64.
  uint64_t numel = 1, span = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t s = unsigned_field(shape[i], source, what + ": shape[" + std::to_string(i) + "]");
    overflow = overflow || s > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, s, &numel) ||
               __builtin_mul_overflow(span, s > 0 ? s : 1, &span) || span > uint64_t(INT64_MAX);
    e.shape.push_back(int64_t(s > uint64_t(INT64_MAX) ? INT64_MAX : s));
  }
  uint64_t bytes = 0;
  overflow =
      overflow || numel > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, dtype_size(e.dtype), &bytes);
  if (overflow) corrupt(source, what + ": the element count of shape " + shape.dump() + " overflows");

  const json& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    corrupt(source, what + ": 'data_offsets' is " + offsets.dump() + ", expected [begin, end]");
  e.begin = unsigned_field(offsets[0], source, what + ": data_offsets[0]");
  e.end = unsigned_field(offsets[1], source, what + ": data_offsets[1]");
  if (e.begin > e.end)
    corrupt(source, what + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                        "] begin after end");
  if (e.end > buffer_size)
    corrupt(source, what + ": data_offsets end " + std::to_string(e.end) + " is beyond the " +
                        std::to_string(buffer_size) + "-byte data buffer (truncated file?)");
  if (e.end - e.begin != bytes)
    corrupt(source, what + ": data_offsets cover " + std::to_string(e.end - e.begin) + " bytes but " + d +
                        " shape " + shape_str(e.shape) + " needs " + std::to_string(bytes));
  return e;
}

}  // namespace

const Tensor& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::string available;
  size_t shown = 0;
  for (const auto& [n, t] : tensors) {
    if (shown == 32) {
      available += ", ... (" + std::to_string(tensors.size()) + " in all)";
      break;
    }
    available += (shown++ ? ", '" : "'") + n + "'";
  }
  throw IOError("safetensors '" + source + "': no tensor named '" + name +
                "'; available: " + (available.empty() ? std::string("none") : available));
}

const Tensor& SafetensorsFile::get(const std::string& name, const Shape& expected_shape) const {
  const Tensor& t = get(name);
  EF_CHECK(t.shape() == expected_shape, ShapeError, "safetensors '", source, "': tensor '", name,
           "' has shape ", shape_str(t.shape()), "; expected ", shape_str(expected_shape));
  return t;
}

std::string serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(tensors, metadata);
  std::string out;
  emit(p, [&](const void* data, size_t size) { out.append(static_cast<const char*>(data), size); });
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(tensors, metadata);
  write_file_atomic(path, [&](const ByteSink& sink) { emit(p, sink); });
}

SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source) {
  if (bytes.size() < 8)
    corrupt(source, "the file is " + std::to_string(bytes.size()) +
                        " bytes long, shorter than the 8-byte header length that starts a safetensors file");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  if (n > kSafetensorsMaxHeaderBytes)
    corrupt(source, "header length " + std::to_string(n) + " exceeds the limit of " +
                        std::to_string(kSafetensorsMaxHeaderBytes) +
                        " bytes (corrupt, or not a safetensors file)");
  if (n > bytes.size() - 8)
    corrupt(source, "header length " + std::to_string(n) + " is larger than the " +
                        std::to_string(bytes.size() - 8) + " bytes that follow it (truncated file?)");
  std::string_view header_text = bytes.substr(8, n);
  std::string_view buffer = bytes.substr(8 + n);
  json header = parse_header(header_text, source);

  SafetensorsFile file;
  file.source = source;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object())
        corrupt(source, std::string("'__metadata__' is a JSON ") + json_type(info) +
                            ", expected an object of strings");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string())
          corrupt(source,
                  "metadata value for key '" + k + "' is a JSON " + json_type(v) + ", expected a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(name, info, buffer.size(), source));
  }

  // The ranges must tile [0, buffer size) exactly: no overlap, no gap, no trailing bytes.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin
           : a->end != b->end   ? a->end < b->end
                                : a->name < b->name;
  });
  uint64_t cursor = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : order) {
    if (e->begin < cursor)
      corrupt(source, "tensor '" + e->name + "' (bytes " + std::to_string(e->begin) + ".." +
                          std::to_string(e->end) + ") overlaps tensor '" + previous->name + "' (bytes " +
                          std::to_string(previous->begin) + ".." + std::to_string(previous->end) + ")");
    if (e->begin > cursor)
      corrupt(source, "bytes " + std::to_string(cursor) + ".." + std::to_string(e->begin) +
                          " of the data buffer belong to no tensor (a gap before tensor '" + e->name + "')");
    cursor = e->end;
    previous = e;
  }
  if (cursor != buffer.size())
    corrupt(source, "bytes " + std::to_string(cursor) + ".." + std::to_string(buffer.size()) +
                        " of the data buffer belong to no tensor (trailing data)");

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    const char* src = buffer.data() + e.begin;
    size_t size = size_t(e.end - e.begin);
    if (e.dtype == DType::Bool) {
      for (size_t i = 0; i < size; ++i)
        if (uint8_t(src[i]) > 1)
          corrupt(source, "tensor '" + e.name + "': BOOL element " + std::to_string(i) + " is byte " +
                              std::to_string(int(uint8_t(src[i]))) + ", expected 0 or 1");
    }
    if (size > 0) std::memcpy(t.raw_data(), src, size);
    file.tensors.emplace(e.name, std::move(t));
  }
  return file;
}

SafetensorsFile load_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

}  // namespace eformer::io
