#include "eformer/nn/nn.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "eformer/eformer.h"

#include "../test_util.h"

namespace eformer::nn {
namespace {

using testing::expect_error;

struct Block : Module {
  std::shared_ptr<FeedForward> ffn;
  std::shared_ptr<LayerNorm> norm;
  Block() : Module("Block") {
    norm = register_module("norm", std::make_shared<LayerNorm>(4));
    ffn = register_module("ffn", std::make_shared<FeedForward>(4, 8, 0.1f));
  }
};

struct Net : Module {
  std::shared_ptr<Embedding> embed;
  std::shared_ptr<ModuleList> blocks;
  Tensor scale;
  Net() : Module("Net") {
    scale = register_parameter("scale", Tensor::full({1}, 1.0));
    embed = register_module("embed", std::make_shared<Embedding>(10, 4));
    blocks = register_module("blocks", std::make_shared<ModuleList>());
    blocks->push_back(std::make_shared<Block>());
    blocks->push_back(std::make_shared<Block>());
    register_buffer("table", sinusoidal_positions(3, 4));
  }
};

std::vector<std::string> names(const NamedTensors& named) {
  std::vector<std::string> out;
  for (const auto& [n, t] : named) out.push_back(n);
  return out;
}

TEST(Module, DottedNamesInRegistrationOrder) {
  Net net;
  const std::vector<std::string> expected = {"scale",
                                             "embed.weight",
                                             "blocks.0.norm.weight",
                                             "blocks.0.norm.bias",
                                             "blocks.0.ffn.fc1.weight",
                                             "blocks.0.ffn.fc1.bias",
                                             "blocks.0.ffn.fc2.weight",
                                             "blocks.0.ffn.fc2.bias",
                                             "blocks.1.norm.weight",
                                             "blocks.1.norm.bias",
                                             "blocks.1.ffn.fc1.weight",
                                             "blocks.1.ffn.fc1.bias",
                                             "blocks.1.ffn.fc2.weight",
                                             "blocks.1.ffn.fc2.bias"};
  EXPECT_EQ(names(net.named_parameters()), expected);
  EXPECT_EQ(names(net.named_buffers()), std::vector<std::string>{"table"});
  auto sd = names(net.state_dict());
  EXPECT_EQ(sd.size(), expected.size() + 1);
  EXPECT_EQ(sd.back(), "table");
  EXPECT_EQ(net.num_parameters(), 1 + 40 + 2 * (8 + 32 + 8 + 32 + 4));
  for (const Tensor& p : net.parameters()) EXPECT_TRUE(requires_grad(p));
  EXPECT_FALSE(requires_grad(*net.find_buffer("table")));
  EXPECT_EQ(net.blocks->get<Block>(1).ffn->fc1()->out_features(), 8);
}

TEST(Module, TrainEvalPropagates) {
  Net net;
  EXPECT_TRUE(net.is_training());
  net.eval();
  EXPECT_FALSE(net.blocks->get<Block>(0).ffn->dropout()->is_training());
  net.train();
  EXPECT_TRUE(net.blocks->get<Block>(1).ffn->dropout()->active());
  // A child registered into an eval-mode parent follows the parent.
  net.eval();
  net.blocks->push_back(std::make_shared<Dropout>(0.5f));
  EXPECT_FALSE(net.blocks->at(2)->is_training());
}

TEST(Module, RegistrationErrors) {
  Module m("Custom");
  m.register_parameter("w", Tensor::zeros({2}));
  expect_error<ValueError>([&] { m.register_parameter("w", Tensor::zeros({2})); },
                           {"Custom", "'w'", "taken"});
  expect_error<ValueError>([&] { m.register_module("w", std::make_shared<Dropout>()); }, {"'w'", "taken"});
  expect_error<ValueError>([&] { m.register_parameter("a.b", Tensor::zeros({2})); },
                           {"'a.b'", "without '.'"});
  expect_error<ValueError>([&] { m.register_parameter("", Tensor::zeros({2})); }, {"non-empty"});
  expect_error<ShapeError>([&] { m.register_parameter("i", Tensor::zeros({2}, DType::Int64)); },
                           {"'i'", "int64", "float32"});
  ModuleList list;
  expect_error<IndexError>([&] { list.at(0); }, {"ModuleList", "index 0"});
  list.push_back(std::make_shared<Dropout>());
  expect_error<ValueError>([&] { list.get<Linear>(0); }, {"Dropout(p=0.5)"});
}

TEST(Module, LoadStateDictCopiesInPlaceAndChecksEverything) {
  rng::manual_seed(1);
  Net a;
  rng::manual_seed(2);
  Net b;
  Tensor handle = b.embed->weight();  // e.g. held by an optimizer
  std::map<std::string, Tensor> sd;
  for (auto& [n, t] : a.state_dict()) sd[n] = t;
  b.load_state_dict(sd);
  EXPECT_EQ(handle.to_vector(), a.embed->weight().to_vector());
  EXPECT_TRUE(handle.is_same(b.embed->weight()));

  auto missing = sd;
  missing.erase("blocks.1.norm.bias");
  missing["extra.weight"] = Tensor::zeros({1});
  expect_error<ValueError>([&] { b.load_state_dict(missing); },
                           {"Net()", "missing 1 ['blocks.1.norm.bias']", "unexpected 1 ['extra.weight']"});
  b.load_state_dict(missing, /*strict=*/false);

  auto wrong = sd;
  wrong["blocks.0.ffn.fc1.weight"] = Tensor::zeros({4, 8});
  const auto before = b.blocks->get<Block>(0).norm->weight().to_vector();
  expect_error<ShapeError>([&] { b.load_state_dict(wrong, false); },
                           {"'blocks.0.ffn.fc1.weight'", "expects shape [8, 4]", "found [4, 8]"});
  EXPECT_EQ(b.blocks->get<Block>(0).norm->weight().to_vector(), before);  // nothing copied
}

TEST(Module, SaveLoadRoundTrip) {
  rng::manual_seed(3);
  Net a;
  rng::manual_seed(4);
  Net b;
  const std::string path = (std::filesystem::temp_directory_path() / "eformer_nn_test.safetensors").string();
  a.save(path);
  b.load(path);
  auto sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(sa[i].second.to_vector(), sb[i].second.to_vector());
  std::remove(path.c_str());
}

TEST(Modules, ArgumentAndShapeErrorsNameTheModule) {
  expect_error<ValueError>([] { Linear(0, 3); }, {"Linear", "in_features = 0", "> 0"});
  expect_error<ShapeError>(
      [] {
        Linear(4, 3).forward(Tensor::zeros({2, 5}));
      },
      {"Linear(in=4, out=3, bias=true)", "last dim 5", "expected 4"});
  expect_error<ValueError>([] { LayerNorm(-1); }, {"LayerNorm", "d = -1"});
  expect_error<ShapeError>(
      [] {
        LayerNorm(4).forward(Tensor::zeros({2, 3}));
      },
      {"LayerNorm(d=4", "expected 4"});
  expect_error<ValueError>([] { Embedding(5, 0); }, {"Embedding", "embedding_dim = 0"});
  expect_error<ValueError>([] { Dropout(1.0f); }, {"Dropout", "p = 1", "[0, 1)"});
  expect_error<ValueError>([] { Dropout(-0.1f); }, {"Dropout", "[0, 1)"});
  expect_error<ValueError>([] { FeedForward(4, 8, 0.0f, Activation::GELU, 0); },
                           {"FeedForward", "chunks = 0"});
  expect_error<ValueError>([] { parse_activation("swish"); }, {"'swish'", "gelu, gelu_tanh, relu"});
  expect_error<ShapeError>(
      [] {
        FeedForward(4, 8).forward(Tensor::zeros({1, 2, 5}));
      },
      {"FeedForward(d_model=4", "last dim 5", "d_model = 4"});
  expect_error<ShapeError>(
      [] {
        apply_rotary(Tensor::zeros({1, 1, 2, 5}));
      },
      {"apply_rotary", "d = 5", "even"});
  expect_error<IndexError>(
      [] {
        LearnedPositions(4, 2).forward(Tensor::zeros({1, 3, 2}), 2);
      },
      {"LearnedPositions(max_len=4", "[2, 5)"});
}

// Small integers in [-2, 2] from a fixed pattern: with them, ReLU and p = 0.5 (scale 2) every sum in the
// block is exact in float32, whatever order the GEMM adds in.
Tensor small_integers(const Shape& shape, int64_t salt) {
  std::vector<float> v(size_t(numel_of(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(int64_t((i * 7 + size_t(salt) * 13) % 5) - 2);
  return Tensor::from_vector(v, shape);
}

TEST(FeedForward, ChunkedEqualsUnchunkedBitForBitWithDropout) {
  for (int64_t d_ff : {24, 26, 27}) {  // pieces aligned to 1, 2, 4 rows for the dropout counters
    FeedForward ff(16, d_ff, 0.5f, Activation::ReLU);
    std::map<std::string, Tensor> sd;
    int64_t salt = 0;
    for (auto& [n, t] : ff.state_dict()) sd[n] = small_integers(t.shape(), ++salt);
    ff.load_state_dict(sd);
    Tensor x = small_integers({2, 77, 16}, 11);
    set_requires_grad(x, true);
    auto run = [&](int64_t chunks) {
      ff.set_chunks(chunks);
      ff.zero_grad();
      zero_grad(x);
      rng::manual_seed(99);
      Tensor y = ff.forward(x);
      const auto state = rng::default_generator().state();
      backward(sum(mul(y, small_integers(y.shape(), 5))));
      EXPECT_EQ(rng::default_generator().state(), state);
      return std::make_tuple(y.to_vector(), grad(x).to_vector(), grad(ff.fc1()->weight()).to_vector(),
                             grad(ff.fc2()->bias()).to_vector(), state);
    };
    const auto plain = run(1);
    for (int64_t chunks : {2, 5, 1000})
      EXPECT_EQ(run(chunks), plain) << "d_ff " << d_ff << ", chunks " << chunks;
  }
}

}  // namespace
}  // namespace eformer::nn
