#include "eformer/models/models.h"

#include <gtest/gtest.h>

#include "eformer/eformer.h"

#include "../test_util.h"

namespace eformer::models {
namespace {

using testing::expect_error;

ModelConfig small(nlohmann::json overrides = nlohmann::json::object()) {
  nlohmann::json j = {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2},  {"n_layers", 2},
                      {"d_ff", 32},       {"max_len", 12}, {"dropout", 0.0}};
  j.update(overrides);
  return parse_model_config(j);
}

Tensor random_ids(int64_t B, int64_t N, int64_t V, uint64_t seed) {
  std::vector<int64_t> v(size_t(B * N));
  for (size_t i = 0; i < v.size(); ++i) v[i] = int64_t((seed * 2654435761u + i * 40503u) % uint64_t(V));
  return Tensor::from_vector(v, {B, N});
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector(), y = b.to_vector();
  EXPECT_EQ(x.size(), y.size());
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

TEST(ModelConfig, DefaultsRoundTrip) {
  ModelConfig c = small({{"positions", "rotary"}, {"layer_attention", {"full", {{"kind", "flash"}}}}});
  nlohmann::json j = to_json(c);
  EXPECT_EQ(to_json(parse_model_config(j)), j);
  EXPECT_EQ(attention_for_layer(c, 0).kind, "full");
  EXPECT_EQ(attention_for_layer(c, 1).kind, "flash");
  expect_error<IndexError>([&] { attention_for_layer(c, 2); }, {"layer 2", "n_layers = 2"});
}

TEST(ModelConfig, ErrorsNameTheKey) {
  expect_error<ValueError>([] { small({{"nope", 1}}); }, {"unknown key 'nope'", "valid keys: arch"});
  expect_error<ValueError>([] { small({{"d_model", 15}}); }, {"d_model = 15", "n_heads = 2"});
  expect_error<ValueError>([] { small({{"n_layers", 0}}); }, {"n_layers = 0", ">= 1"});
  expect_error<ValueError>([] { small({{"dropout", 1.5}}); }, {"dropout", "[0, 1)"});
  expect_error<ValueError>([] { small({{"positions", "alibi"}}); }, {"positions = 'alibi'", "learned"});
  expect_error<ValueError>(
      [] {
        small({{"attention", "nope"}});
      },
      {"attention.kind = 'nope'", "full, flash"});
  expect_error<ValueError>(
      [] {
        small({{"layer_attention", {"flash"}}});
      },
      {"layer_attention", "n_layers = 2"});
  expect_error<ValueError>([] { small({{"max_len", "12"}}); }, {"max_len = \"12\"", "integer"});
}

TEST(Mechanism, RegistryErrorsListNames) {
  attention::MechanismConfig c{.d_model = 16, .n_heads = 2};
  expect_error<ValueError>([&] { attention::make_mechanism("nope", c); }, {"'nope'", "full, flash, performer, linear"});
  c.options = {{"windw", 4}};
  expect_error<ValueError>([&] { attention::make_mechanism("flash", c); },
                           {"'windw'", "rotary, rotary_base"});
  EXPECT_EQ(attention::mechanism_names(),
            (std::vector<std::string>{"full", "flash", "performer", "linear", "sparse_strided", "sparse_fixed",
                                      "longformer", "bigbird", "local", "aft_full", "aft_simple", "aft_local",
                                      "aft_conv", "lsh"}));
}

TEST(ModelConfig, BlockPolicyCrossAttentionAndAttentionDropout) {
  ModelConfig c = small({{"block", "recompute"}, {"attention_dropout", 0.1}, {"cross_attention", "full"}});
  EXPECT_EQ(c.block, "recompute");
  EXPECT_FLOAT_EQ(c.attention_dropout, 0.1f);
  EXPECT_EQ(c.cross_attention.kind, "full");
  EXPECT_EQ(to_json(parse_model_config(to_json(c))), to_json(c));
  expect_error<ValueError>([] { small({{"block", "reversible"}}); }, {"block = 'reversible'", "plain, recompute"});
  expect_error<ValueError>([] { small({{"attention_dropout", -0.1}}); }, {"attention_dropout", "[0, 1)"});
  // A mechanism's options are checked when the config is parsed, not when the model is built.
  expect_error<ValueError>([] { small({{"attention", {{"kind", "performer"}, {"options", {{"m", "many"}}}}}}); },
                           {"m"});
  // Configs written before these keys existed still parse, with the defaults.
  nlohmann::json old = to_json(small());
  old.erase("block"), old.erase("attention_dropout"), old.erase("cross_attention");
  EXPECT_EQ(parse_model_config(old).block, "plain");
}

TEST(TransformerBlock, RecomputeGivesThePlainGradientsBitForBit) {
  // Dropout and attention dropout on: the recomputation must replay every draw.
  for (const char* kind : {"flash", "full", "performer"}) {
    nlohmann::json o = {{"dropout", 0.2}, {"attention", kind}};
    if (std::string(kind) != "performer") o["attention_dropout"] = 0.2;
    std::vector<std::vector<float>> grads[2];
    float losses[2];
    for (int policy = 0; policy < 2; ++policy) {
      o["block"] = policy ? "recompute" : "plain";
      rng::manual_seed(11);
      LanguageModel lm(small(o));
      lm.train();
      Tensor loss = lm.loss(random_ids(2, 12, 64, 6), random_ids(2, 12, 64, 7));
      autograd::backward({loss});
      losses[policy] = loss.item();
      for (const auto& [name, p] : lm.named_parameters()) grads[policy].push_back(grad(p).to_vector());
    }
    EXPECT_EQ(losses[0], losses[1]) << kind;
    EXPECT_EQ(grads[0], grads[1]) << kind;
  }
}

TEST(EncoderDecoder, CrossAttentionIsItsOwnChoice) {
  ModelConfig c = small({{"arch", "encoder-decoder"}, {"n_encoder_layers", 1}, {"attention", "performer"},
                         {"cross_attention", "full"}});
  EncoderDecoder model(c);
  auto block = model.child("decoder")->child("0");
  EXPECT_NE(block->child("attn")->describe().find("PerformerAttention"), std::string::npos);
  EXPECT_NE(block->child("cross_attn")->describe().find("kind=full"), std::string::npos);
  Tensor logits = model.forward(random_ids(2, 9, 64, 8), random_ids(2, 5, 64, 9));
  EXPECT_EQ(logits.shape(), (Shape{2, 5, 64}));
}

TEST(LanguageModel, StreamingSummaryNamesEachPath) {
  LanguageModel lm(small({{"layer_attention", {"flash", "performer"}}}));
  EXPECT_EQ(lm.streaming_summary(), "layer 0 flash: native; layer 1 performer: native");
}

TEST(LanguageModel, ShapesLossAndBackward) {
  LanguageModel lm(small());
  Tensor ids = random_ids(2, 12, 64, 1);
  Tensor logits = lm.forward(ids);
  EXPECT_EQ(logits.shape(), (Shape{2, 12, 64}));
  Tensor loss = lm.loss(ids, random_ids(2, 12, 64, 2));
  EXPECT_NEAR(loss.item(), std::log(64.0f), 0.5f);
  autograd::backward({loss});
  for (const auto& [name, p] : lm.named_parameters()) EXPECT_TRUE(grad(p).defined()) << name;
  expect_error<ValueError>([&] { lm.forward(random_ids(1, 13, 64, 3)); },
                           {"sequence length 13", "max_len = 12"});
}

TEST(LanguageModel, StepEqualsForward) {
  for (const char* positions : {"learned", "rotary", "sinusoidal"}) {
    LanguageModel lm(small({{"positions", positions}}));
    autograd::NoGradGuard no_grad;
    Tensor ids = random_ids(2, 12, 64, 4);
    Tensor full = lm.forward(ids);
    DecodeState state = lm.start_decoding(2);
    std::vector<Tensor> parts;
    for (int64_t t = 0; t < 12; t += 4) parts.push_back(lm.step(state, contiguous(narrow(ids, 1, t, 4))));
    EXPECT_EQ(state.position, 12);
    EXPECT_LT(max_abs_diff(cat(parts, 1), full), 1e-4f) << positions;
  }
}

TEST(LanguageModel, NoCausalLeak) {
  LanguageModel lm(small({{"attention", "flash"}}));
  Tensor a = random_ids(1, 12, 64, 5);
  auto v = a.to_int_vector();
  for (size_t i = 7; i < v.size(); ++i) v[i] = (v[i] + 1) % 64;
  Tensor b = Tensor::from_vector(v, {1, 12});
  auto la = lm.forward(a).to_vector(), lb = lm.forward(b).to_vector();
  for (size_t i = 0; i < size_t(7 * 64); ++i) ASSERT_EQ(la[i], lb[i]) << i;
}

}  // namespace
}  // namespace eformer::models
