// Linformer's layerwise sharing (one E for keys, values, heads and layers): a layer built with
// shared_from uses the first layer's E, and E's gradient is the sum of both layers' contributions (checked
// against two independent "kv" layers holding copies of the same weights); a model built by build_blocks
// has one E whatever its depth. The math itself is checked against PyTorch float64 in
// tests/python/test_attention_linformer.py and by the contract suites.
#include <gtest/gtest.h>

#include <algorithm>

#include "../test_util.h"
#include "eformer/attention/mechanisms/linformer.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_near_all;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

MechanismConfig linformer_config(const std::string& sharing) {
  MechanismConfig c;
  c.d_model = 16, c.n_heads = 2, c.max_len = 12;
  c.options = {{"k", 5}, {"sharing", sharing}};
  return c;
}

void copy_parameters(nn::Module& to, const nn::Module& from, const Tensor& E) {
  const auto sources = from.named_parameters();
  for (auto& [name, p] : to.named_parameters()) {
    const auto it = std::find_if(sources.begin(), sources.end(), [&n = name](const auto& s) { return s.first == n; });
    ASSERT_TRUE(name == "E" || it != sources.end()) << name;
    const Tensor s = (name == "E" ? E : it->second).contiguous_data();
    std::copy(s.data<float>(), s.data<float>() + s.numel(), p.data<float>());
  }
}

TEST(Linformer, LayerwiseSharingUsesTheFirstLayersEAndSumsTheGradients) {
  Seed seed;
  rng::Generator gen(seed.value);
  auto first = make_mechanism("linformer", linformer_config("layerwise"));
  MechanismConfig second_config = linformer_config("layerwise");
  second_config.shared_from = first.get();
  auto second = make_mechanism("linformer", second_config);
  const auto& lin1 = static_cast<const LinformerAttention&>(*first);
  const auto& lin2 = static_cast<const LinformerAttention&>(*second);
  EXPECT_TRUE(lin2.E().is_same(lin1.E()) && lin2.F().is_same(lin1.E()));
  EXPECT_EQ(second->find_parameter("E"), nullptr) << "the second layer must not own a copy";

  // The same two layers as independent "kv" mechanisms holding copies of the weights.
  auto a = make_mechanism("linformer", linformer_config("kv"));
  auto b = make_mechanism("linformer", linformer_config("kv"));
  copy_parameters(*a, *first, lin1.E());
  copy_parameters(*b, *second, lin1.E());

  Tensor x = normal({2, 9, 16}, gen), g = normal({2, 9, 16}, gen);
  Tensor shared = second->forward(first->forward(x));
  backward(shared, g);
  Tensor twins = b->forward(a->forward(x));
  backward(twins, g);
  const std::vector<float> twin_out = values(twins);
  expect_near_all(values(shared), std::vector<double>(twin_out.begin(), twin_out.end()), 1e-6, "forward");
  const std::vector<float> ga = values(grad(*a->find_parameter("E"))), gb = values(grad(*b->find_parameter("E")));
  std::vector<double> sum(ga.size());
  for (size_t i = 0; i < ga.size(); ++i) sum[i] = double(ga[i]) + gb[i];
  expect_near_all(values(grad(lin1.E())), sum, 1e-5, "grad E = both layers' contributions");
}

TEST(Linformer, AModelHasOneEAcrossItsLayersUnderLayerwiseSharing) {
  for (const std::string sharing : {"layerwise", "kv"}) {
    models::ModelConfig c;
    c.arch = "encoder", c.vocab_size = 11, c.d_model = 16, c.n_heads = 2, c.n_layers = 3, c.d_ff = 32;
    c.max_len = 12, c.dropout = 0.0f;
    c.attention.kind = "linformer";
    c.attention.options = {{"k", 4}, {"sharing", sharing}};
    models::Encoder encoder(c, c.n_layers);
    int64_t projections = 0;
    for (const auto& [name, p] : encoder.named_parameters())
      projections += name.size() >= 2 && name.substr(name.size() - 2) == ".E";
    EXPECT_EQ(projections, sharing == "layerwise" ? 1 : 3) << sharing;
    Tensor ids = Tensor::zeros({1, 7}, DType::Int64);
    EXPECT_EQ(encoder.forward(ids).shape(), (Shape{1, 7, 16}));
  }
}

}  // namespace
}  // namespace eformer::attention
