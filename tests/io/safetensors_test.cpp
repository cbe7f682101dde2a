#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "eformer/eformer.h"
#include "eformer/io/io.h"

#include "../test_util.h"

namespace eformer::io {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

Tensor bool_tensor(const std::vector<bool>& values, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::Bool);
  for (size_t i = 0; i < values.size(); ++i) t.data<bool>()[i] = values[i];
  return t;
}

std::vector<std::pair<std::string, Tensor>> sample() {
  return {
      {"weight", Tensor::from_vector(std::vector<float>{1, -2, 3.5f, 4, 5, 6}, {2, 3})},
      {"scalar", Tensor::scalar(0.25f)},
      {"empty", Tensor::zeros({0, 4})},
      {"ids", Tensor::from_vector(std::vector<int64_t>{-1, 1LL << 40, 7}, {3})},
      {"mask", bool_tensor({true, false, true, true}, {2, 2})},
  };
}

// A file with `header` as its JSON text (padded to 8) followed by `data`.
std::string file_with(const std::string& header, const std::string& data = "") {
  std::string text = header;
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + text + data;
}

std::string f32_bytes(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

void expect_corrupt(const std::string& bytes, const std::string& needle) {
  try {
    parse_safetensors(bytes, "case.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning: " << needle;
  } catch (const IOError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("case.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos)
        << "message: " << msg << "\nexpected to contain: " << needle;
  }
}

TEST(Safetensors, RoundTripInMemory) {
  auto tensors = sample();
  std::string bytes = serialize_safetensors(tensors, {{"format", "pt"}, {"note", "x"}});
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  SafetensorsFile file = parse_safetensors(bytes);
  EXPECT_EQ(file.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const Tensor& got = file.get(name, t.shape());
    EXPECT_EQ(got.dtype(), t.dtype()) << name;
    ASSERT_EQ(got.numel(), t.numel());
    EXPECT_EQ(std::memcmp(got.raw_data(), t.raw_data(), size_t(t.numel()) * dtype_size(t.dtype())), 0)
        << name;
  }
}

TEST(Safetensors, WriterOrderIsTheReferenceOrder) {
  // Larger element size first, then by name; packed.
  std::string bytes = serialize_safetensors(sample());
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["ids"]["data_offsets"], (nlohmann::json{0, 24}));
  EXPECT_EQ(header["empty"]["data_offsets"], (nlohmann::json{24, 24}));
  EXPECT_EQ(header["scalar"]["data_offsets"], (nlohmann::json{24, 28}));
  EXPECT_EQ(header["weight"]["data_offsets"], (nlohmann::json{28, 52}));
  EXPECT_EQ(header["mask"]["data_offsets"], (nlohmann::json{52, 56}));
  EXPECT_EQ(header["scalar"]["shape"], nlohmann::json::array());
  EXPECT_FALSE(header.contains("__metadata__"));
  EXPECT_EQ(bytes.size(), 8 + n + 56);
}

TEST(Safetensors, WriterArgumentErrors) {
  Tensor t = Tensor::zeros({2});
  EXPECT_THROW(serialize_safetensors({{"a", t}, {"a", t}}), ValueError);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", t}}), ValueError);
  EXPECT_THROW(serialize_safetensors({{"", t}}), ValueError);
  EXPECT_THROW(serialize_safetensors({{"u", Tensor()}}), ValueError);
  EXPECT_THROW(serialize_safetensors({{"b", Tensor::zeros({2}, DType::BFloat16)}}), ValueError);
  EXPECT_THROW(serialize_safetensors({{"\xff", t}}), ValueError);  // not UTF-8
  EXPECT_THROW(serialize_safetensors({{"a", t}}, {{"k", "\xc3"}}), ValueError);
}

TEST(Safetensors, GetChecksNameAndShape) {
  SafetensorsFile file = parse_safetensors(serialize_safetensors(sample()), "m.safetensors");
  EXPECT_TRUE(file.contains("weight"));
  try {
    file.get("weight", {3, 2});
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'weight' has shape [2, 3]; expected [3, 2]"), std::string::npos) << msg;
  }
  try {
    file.get("bias");
    ADD_FAILURE();
  } catch (const IOError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("no tensor named 'bias'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'empty', 'ids', 'mask', 'scalar', 'weight'"), std::string::npos) << msg;
  }
}

TEST(Safetensors, CorruptInputsGiveClearErrors) {
  const std::string two = f32_bytes({1, 2});
  expect_corrupt("", "shorter than the 8-byte header length");
  expect_corrupt("abc", "shorter than the 8-byte header length");
  {
    uint64_t n = uint64_t(1) << 62;
    expect_corrupt(std::string(reinterpret_cast<const char*>(&n), 8) + "{}", "exceeds the limit");
    n = 64;
    expect_corrupt(std::string(reinterpret_cast<const char*>(&n), 8) + "{}",
                   "larger than the 2 bytes that follow");
    n = 0;
    expect_corrupt(std::string(reinterpret_cast<const char*>(&n), 8), "not valid JSON");
  }
  expect_corrupt(file_with("{oops"), "not valid JSON");
  expect_corrupt(file_with("{} trailing"), "not valid JSON");
  expect_corrupt(file_with("\"text\""), "is a JSON string, expected an object");
  expect_corrupt(file_with(R"({"a": []})"), "tensor 'a': the entry is a JSON array");
  expect_corrupt(file_with(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", two), "has no 'dtype'");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})", two), "has no 'shape'");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2]}})", two), "has no 'data_offsets'");
  expect_corrupt(file_with(R"({"a": {"dtype": null, "shape": [2], "data_offsets": [0, 8]}})", two),
                 "'dtype' is a JSON null");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": {}, "data_offsets": [0, 8]}})", two),
                 "'shape' is a JSON object");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", two),
                 "shape[0] is negative");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}})", two),
                 "shape[0] is a JSON number");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 8]}})", two),
                 "shape[0] is a JSON boolean");
  expect_corrupt(
      file_with(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", two),
      "overflows");
  expect_corrupt(
      file_with(R"({"a": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 8]}})", two),
      "overflows");
  expect_corrupt(
      file_with(R"({"a": {"dtype": "I64", "shape": [0, 4294967296, 4294967296], "data_offsets": [0, 0]}})"),
      "overflows");
  expect_corrupt(file_with(R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}})", two),
                 "tensor 'a': unsupported dtype 'F16'; supported: F32, I64, BOOL");
  expect_corrupt(file_with(R"({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", two),
                 "unsupported dtype 'F64'");
  expect_corrupt(file_with(R"({"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})", two),
                 "unsupported dtype 'I32'");
  expect_corrupt(file_with(R"({"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}})", two),
                 "unknown dtype 'f32'");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", two),
                 "expected [begin, end]");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}})", two),
                 "expected [begin, end]");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, -8]}})", two),
                 "data_offsets[1] is negative");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", two),
                 "begin after end");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", two),
                 "beyond the 8-byte data buffer");
  expect_corrupt(
      file_with(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}})", two),
      "beyond the 8-byte data buffer");
  expect_corrupt(file_with(R"({"a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 8]}})", two),
                 "needs 16");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                           two),
                 "overlaps tensor 'a'");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                           two),
                 "overlaps tensor");
  expect_corrupt(file_with(R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", two),
                 "bytes 0..4 of the data buffer belong to no tensor");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", two),
                 "trailing data");
  expect_corrupt(file_with("{}", two), "trailing data");
  expect_corrupt(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                           two),
                 "duplicate key 'a'");
  expect_corrupt(
      file_with(R"({"a": {"dtype": "F32", "shape": [2], "shape": [2], "data_offsets": [0, 8]}})", two),
      "duplicate key 'shape' in entry 'a'");
  expect_corrupt(file_with(R"({"__metadata__": "x"})"), "'__metadata__' is a JSON string");
  expect_corrupt(file_with(R"({"__metadata__": {"k": ["v"]}})"),
                 "metadata value for key 'k' is a JSON array");
  expect_corrupt(file_with(R"({"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}})",
                           std::string("\x01\x00\x02", 3)),
                 "BOOL element 2 is byte 2");
  expect_corrupt(file_with("{\"a\": " + std::string(100000, '[') + std::string(100000, ']') + "}"),
                 "nests JSON");
  expect_corrupt(file_with("{\"\xff\xfe\": 1}"), "not valid JSON");
}

TEST(Safetensors, AcceptsEdgeCasesTheFormatAllows) {
  // Unknown entry fields are ignored (as the reference does); empty tensors may share an offset;
  // entries may appear in any order in the header.
  auto file =
      parse_safetensors(file_with(R"({"z": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8], "extra": 1},
      "y": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
      "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "w": {"dtype": "I64", "shape": [0, 3], "data_offsets": [4, 4]}})",
                                  f32_bytes({1, 2})));
  EXPECT_EQ(file.get("x").to_vector(), std::vector<float>{1});
  EXPECT_EQ(file.get("z").to_vector(), std::vector<float>{2});
  EXPECT_EQ(file.get("w", {0, 3}).numel(), 0);
  EXPECT_TRUE(parse_safetensors(file_with("{}")).tensors.empty());
}

// Random truncations and byte flips of a valid file either load or throw eformer::Error; never a
// crash, an out-of-bounds read (AddressSanitizer in CI) or another exception type.
TEST(Safetensors, FuzzedInputsLoadOrThrow) {
  const std::string good = serialize_safetensors(sample(), {{"k", "v"}});
  int loaded = 0, rejected = 0;
  auto attempt = [&](const std::string& bytes) {
    try {
      parse_safetensors(bytes);
      ++loaded;
    } catch (const Error&) {
      ++rejected;
    }
  };
  for (size_t len = 0; len < good.size(); ++len) attempt(good.substr(0, len));
  std::mt19937_64 gen(1234);
  for (int trial = 0; trial < 20000; ++trial) {
    std::string bytes = good;
    int flips = 1 + int(gen() % 4);
    for (int f = 0; f < flips; ++f) {
      size_t pos = gen() % bytes.size();
      if (gen() % 2) {
        bytes[pos] = char(gen());
      } else {
        bytes[pos] = char(uint8_t(bytes[pos]) ^ (1u << (gen() % 8)));
      }
    }
    if (gen() % 4 == 0) bytes.resize(gen() % bytes.size());
    attempt(bytes);
  }
  EXPECT_EQ(loaded + rejected, int(good.size()) + 20000);
  EXPECT_GT(loaded, 0);  // flips inside float data still load
  EXPECT_GT(rejected, 0);
}

TEST(Safetensors, SaveAndLoadFile) {
  TempDir dir;
  std::string path = (dir.path / "model.safetensors").string();
  save_safetensors(path, sample(), {{"epoch", "2"}});
  SafetensorsFile file = load_safetensors(path);
  EXPECT_EQ(file.source, path);
  EXPECT_EQ(file.metadata.at("epoch"), "2");
  EXPECT_EQ(file.get("ids", {3}).to_int_vector(), (std::vector<int64_t>{-1, 1LL << 40, 7}));
  EXPECT_EQ(read_file(path), serialize_safetensors(sample(), {{"epoch", "2"}}));
  auto named = sample();
  std::map<std::string, Tensor> as_map(named.begin(), named.end());
  save_safetensors(path, as_map);
  EXPECT_TRUE(load_safetensors(path).metadata.empty());
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  try {
    load_safetensors((dir.path / "missing.safetensors").string());
    ADD_FAILURE();
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.safetensors': No such file"), std::string::npos)
        << e.what();
  }
}

TEST(Safetensors, FailedSaveKeepsThePreviousFile) {
  TempDir dir;
  std::string path = (dir.path / "ckpt.safetensors").string();
  save_safetensors(path, {{"a", Tensor::full({3}, 1.0)}});
  const std::string before = read_file(path);
  // Invalid input is rejected before the disk is touched.
  EXPECT_THROW(save_safetensors(path, {{"a", Tensor::zeros({2})}, {"a", Tensor::zeros({2})}}), ValueError);
  EXPECT_THROW(save_safetensors(path, {{"b", Tensor::zeros({2}, DType::BFloat16)}}), ValueError);
  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST(AtomicFile, WritesAndReplaces) {
  TempDir dir;
  std::string path = (dir.path / "f.bin").string();
  write_file_atomic(path, std::string_view("first"));
  EXPECT_EQ(read_file(path), "first");
  write_file_atomic(path, [](const ByteSink& sink) {
    sink("sec", 3);
    sink("ond", 3);
    sink(nullptr, 0);
  });
  EXPECT_EQ(read_file(path), "second");
  write_file_atomic(path, std::string_view(""));
  EXPECT_EQ(read_file(path), "");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"f.bin"});
}

TEST(AtomicFile, WriterFailureLeavesTargetAndNoTemp) {
  TempDir dir;
  std::string path = (dir.path / "f.bin").string();
  write_file_atomic(path, std::string_view("keep me"));
  EXPECT_THROW(write_file_atomic(path,
                                 [](const ByteSink& sink) {
                                   sink("partial", 7);
                                   throw ValueError("writer failed half way");
                                 }),
               ValueError);
  EXPECT_EQ(read_file(path), "keep me");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"f.bin"});
}

TEST(AtomicFile, FilesystemErrorsNameThePath) {
  TempDir dir;
  // No such directory.
  std::string missing = (dir.path / "nope" / "f.bin").string();
  try {
    write_file_atomic(missing, std::string_view("x"));
    ADD_FAILURE();
  } catch (const IOError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(missing), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
  // The target is a directory: the temp file is written, the rename fails and is cleaned up.
  fs::create_directory(dir.path / "d");
  std::string target = (dir.path / "d").string();
  try {
    write_file_atomic(target, std::string_view("x"));
    ADD_FAILURE();
  } catch (const IOError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'" + target + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rename"), std::string::npos) << msg;
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"d"});
  EXPECT_THROW(write_file_atomic("", std::string_view("x")), IOError);
  EXPECT_THROW(read_file(target), IOError);
}

}  // namespace
}  // namespace eformer::io
