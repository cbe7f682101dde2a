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
                                      "aft_conv", "lsh", "routing", "linformer", "synthesizer",
                                      "memory_compressed", "sinkhorn", "etc", "isab", "axial"}));
}

TEST(ModelConfig, BlockPolicyCrossAttentionAndAttentionDropout) {
  ModelConfig c = small({{"block", "recompute"}, {"attention_dropout", 0.1}, {"cross_attention", "full"}});
  EXPECT_EQ(c.block, "recompute");
  EXPECT_FLOAT_EQ(c.attention_dropout, 0.1f);
  EXPECT_EQ(c.cross_attention.kind, "full");
  EXPECT_EQ(to_json(parse_model_config(to_json(c))), to_json(c));
  expect_error<ValueError>([] { small({{"block", "revnet"}}); }, {"block = 'revnet'", "plain, recompute, reversible"});
  expect_error<ValueError>([] { small({{"block", "reversible"}, {"pre_ln", false}}); },
                           {"'reversible' needs pre_ln = true"});
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

// The RevNet coupling written plainly with autograd (every activation kept): what the reversible
// node must equal.
Tensor coupled_plainly(const nn::ModuleList& blocks, const Tensor& x, const Tensor& key_mask, const Tensor& memory,
                       const Tensor& memory_mask) {
  Tensor y1 = x, y2 = x;
  for (int64_t i = 0; i < blocks.size(); ++i) {
    const auto& b = blocks.get<TransformerBlock>(i);
    y1 = add(y1, b.mixing_branch(
                     y2, [&](const Tensor& y) { return b.attention_branch(y, key_mask); }, memory, memory_mask));
    y2 = add(y2, b.ffn_branch(y1));
  }
  return mul_scalar(add(y1, y2), 0.5f);
}

// Relative to b's largest magnitude, with a floor: some gradients are zero in exact arithmetic
// (a key bias under softmax shifts every score of a row alike) and only rounding noise in floats.
float max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float scale = 1e-2f, m = 0;
  for (float v : b) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m / scale;
}

TEST(Reversible, EqualsTheCouplingComputedPlainlyWithDropoutOn) {
  struct Case {
    const char* name;
    nlohmann::json config;
    Stack stack;
    bool masked;
  };
  const std::vector<Case> cases = {
      {"decoder flash", {{"attention", "flash"}, {"attention_dropout", 0.2}}, Stack::Decoder, false},
      {"decoder performer", {{"attention", "performer"}}, Stack::Decoder, false},
      {"decoder chunked ffn", {{"attention", "local"}, {"ffn_chunks", 3}}, Stack::Decoder, false},
      {"encoder masked", {{"attention", "full"}, {"attention_dropout", 0.1}}, Stack::Encoder, true},
      {"cross-decoder", {{"attention", "flash"}, {"cross_attention", "full"}}, Stack::CrossDecoder, true},
  };
  for (const Case& c : cases) {
    nlohmann::json o = c.config;
    o["dropout"] = 0.2;
    o["block"] = "reversible";
    o["n_layers"] = 3;
    rng::manual_seed(5);
    ModelConfig config = small(o);
    auto blocks = build_blocks(config, 3, c.stack);
    blocks->train();
    const bool cross = c.stack == Stack::CrossDecoder;
    Tensor x = testing::leaf(testing::randn({2, 12, 16}, 1)), memory, weights = testing::randn({2, 12, 16}, 2);
    if (cross) memory = testing::leaf(testing::randn({2, 7, 16}, 3));
    Tensor key_mask, memory_mask;
    // true = attend; the second sequence's last keys are padding.
    auto padding = [](int64_t n, int64_t pad) {
      Tensor m = Tensor::zeros({2, n}, DType::Bool);
      for (int64_t j = 0; j < n; ++j) m.data<bool>()[j] = true, m.data<bool>()[n + j] = j < n - pad;
      return m;
    };
    if (c.masked && c.stack == Stack::Encoder) key_mask = padding(12, 2);
    if (c.masked && cross) memory_mask = padding(7, 1);
    std::vector<std::vector<float>> results[2];
    for (int reversible = 0; reversible < 2; ++reversible) {
      rng::manual_seed(17);
      for (const auto& [name, p] : blocks->named_parameters()) zero_grad(p);
      zero_grad(x);
      if (cross) zero_grad(memory);
      Tensor out = reversible ? run_blocks(*blocks, x, key_mask, memory, memory_mask)
                              : coupled_plainly(*blocks, x, key_mask, memory, memory_mask);
      autograd::backward({sum(mul(out, weights))});
      results[reversible].push_back(out.to_vector());
      results[reversible].push_back(grad(x).to_vector());
      if (cross) results[reversible].push_back(grad(memory).to_vector());
      for (const auto& [name, p] : blocks->named_parameters()) results[reversible].push_back(grad(p).to_vector());
    }
    // The forward is the same ops in the same order: bit for bit. The backward rebuilds the
    // inputs (x2 = y2 - F(y1), ...), exact only up to float rounding.
    EXPECT_EQ(results[0][0], results[1][0]) << c.name;
    for (size_t i = 1; i < results[0].size(); ++i)
      EXPECT_LT(max_rel_diff(results[1][i], results[0][i]), 2e-4f) << c.name << " gradient " << i;
  }
}

TEST(Reversible, LanguageModelStepEqualsForwardAndNoLeak) {
  for (const char* positions : {"learned", "axial"}) {
    LanguageModel lm(small({{"block", "reversible"}, {"positions", positions}, {"layer_attention", {"flash", "performer"}}}));
    autograd::NoGradGuard no_grad;
    Tensor ids = random_ids(2, 12, 64, 4);
    Tensor full = lm.forward(ids);
    DecodeState state = lm.start_decoding(2);
    std::vector<Tensor> parts;
    for (int64_t t = 0; t < 12; t += 4) parts.push_back(lm.step(state, contiguous(narrow(ids, 1, t, 4))));
    EXPECT_LT(max_abs_diff(cat(parts, 1), full), 1e-4f) << positions;
    auto v = ids.to_int_vector();
    for (size_t i = 8; i < 12; ++i) v[i] = (v[i] + 1) % 64;
    auto changed = lm.forward(Tensor::from_vector(v, {2, 12})).to_vector(), before = full.to_vector();
    for (size_t i = 0; i < size_t(8 * 64); ++i) ASSERT_EQ(changed[i], before[i]) << positions << " " << i;
  }
  LanguageModel lm(small({{"block", "reversible"}}));
  expect_error<ValueError>([&] { lm.block(0).forward(testing::randn({1, 4, 16}, 1)); }, {"models::run_blocks"});
}

TEST(Reversible, ActivationMemoryDoesNotGrowWithDepth) {
  // Allocator peak of forward + backward minus what the parameters and their gradients take.
  auto activation_peak = [](const char* policy, int64_t layers) {
    LanguageModel lm(small({{"block", policy}, {"n_layers", layers}, {"max_len", 512}, {"dropout", 0.1}}));
    lm.train();
    Tensor ids = random_ids(2, 512, 64, 1), targets = random_ids(2, 512, 64, 2);
    int64_t param_bytes = 0;
    for (const auto& [name, p] : lm.named_parameters()) param_bytes += p.numel() * 4;
    allocator::reset_peak();
    const int64_t live = allocator::stats().live_bytes;
    autograd::backward({lm.loss(ids, targets)});
    return allocator::stats().peak_bytes - live - param_bytes;
  };
  const int64_t plain2 = activation_peak("plain", 2), plain8 = activation_peak("plain", 8);
  const int64_t rev2 = activation_peak("reversible", 2), rev8 = activation_peak("reversible", 8);
  EXPECT_GT(plain8, 3 * plain2);  // plain grows with depth...
  EXPECT_LT(rev8, rev2 * 13 / 10);   // ...reversible stays within 1.3x
  EXPECT_LT(rev8, plain8 / 3);
}

TEST(ModelConfig, AxialPositions) {
  ModelConfig c = small({{"positions", "axial"}, {"max_len", 100}});
  AxialLayout a = axial_layout(c);
  EXPECT_EQ(a.shape, (std::array<int64_t, 2>{7, 16}));
  EXPECT_EQ(a.dims, (std::array<int64_t, 2>{8, 8}));
  c = small({{"positions", "axial"}, {"max_len", 12}, {"axial_shape", {3, 4}}, {"axial_dims", {4, 12}}});
  EXPECT_EQ(to_json(parse_model_config(to_json(c))), to_json(c));
  expect_error<ValueError>([] { small({{"positions", "axial"}, {"axial_shape", {3, 3}}}); },
                           {"axial_shape = [3, 3]", "max_len = 12"});
  expect_error<ValueError>([] { small({{"positions", "axial"}, {"axial_dims", {4, 4}}}); },
                           {"axial_dims = [4, 4]", "d_model = 16"});
  expect_error<ValueError>([] { small({{"positions", "axial"}, {"axial_dims", {4}}}); }, {"axial_dims", "two"});
  expect_error<ValueError>([] { small({{"axial_shape", {3, 4}}}); }, {"positions = 'axial'"});
  // Position p gets concat(rows[p / n2], cols[p % n2]).
  nn::AxialPositions axial({3, 4}, {2, 3});
  Tensor table = axial.positions(5, 6);
  auto t = table.to_vector(), rows = axial.rows().to_vector(), cols = axial.cols().to_vector();
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t p = 6 + i;
    for (int64_t j = 0; j < 2; ++j) EXPECT_EQ(t[size_t(i * 5 + j)], rows[size_t((p / 4) * 2 + j)]);
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(t[size_t(i * 5 + 2 + j)], cols[size_t((p % 4) * 3 + j)]);
  }
  expect_error<IndexError>([&] { axial.positions(2, 11); }, {"3 x 4 grid", "<= 12"});
}

}  // namespace
}  // namespace eformer::models
