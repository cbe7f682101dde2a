// Capabilities are enforced where a model is built and at every call, never deep inside a kernel:
// each missing capability is a ValueError naming the layer, the mechanism and what is missing.
// The built-in mechanisms have every capability, so throwaway mechanisms are registered here for
// the test only (register_mechanism is also how code outside the library adds one).
#include <gtest/gtest.h>

#include <string>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;

// y_t = x_t (bidirectional forms) or the mean of x_1..x_t (causal): parameter-free mixers.
class MeanMixer : public Mechanism {
 public:
  MeanMixer(const std::string& name, const MechanismConfig& c) : Mechanism("MeanMixer", name, c) {}

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor&) override {
    if (!config().causal) return memory.defined() ? mul_scalar(x, 1.0f) : x;
    Tensor c = x.contiguous_data(), y = Tensor::empty(x.shape());
    const int64_t Bn = x.size(0), Nn = x.size(1), Dn = x.size(2);
    for (int64_t b = 0; b < Bn; ++b)
      for (int64_t c0 = 0; c0 < Dn; ++c0) {
        float sum = 0;
        for (int64_t i = 0; i < Nn; ++i) {
          sum += c.data<float>()[(b * Nn + i) * Dn + c0];
          y.data<float>()[(b * Nn + i) * Dn + c0] = sum / float(i + 1);
        }
      }
    return y;
  }
};

// Registers `name` with `caps` for the scope of a test.
struct Throwaway {
  std::string name;
  Throwaway(std::string n, Capabilities caps) : name(std::move(n)) {
    MechanismEntry e;
    e.name = name;
    e.description = "a throwaway mechanism of the capability tests";
    e.capabilities = caps;
    e.reference = "none";
    e.check_options = [n = name](const nlohmann::json& o) {
      for (const auto& [key, value] : o.items()) options::unknown("attention '" + n + "'", key, {});
    };
    e.make = [n = name](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
      return std::make_shared<MeanMixer>(n, c);
    };
    register_mechanism(std::move(e));
  }
  ~Throwaway() { unregister_mechanism(name); }
};

MechanismConfig cfg(bool causal, bool cross = false, int64_t layer = -1) {
  MechanismConfig c;
  c.d_model = 8;
  c.n_heads = 2;
  c.causal = causal;
  c.cross = cross;
  c.layer = layer;
  c.max_len = 16;
  return c;
}

models::ModelConfig model(const std::string& arch, const std::string& self,
                          const std::string& cross = "flash") {
  models::ModelConfig m;
  m.arch = arch;
  m.d_model = 16, m.n_heads = 2, m.n_layers = 2, m.d_ff = 32, m.max_len = 16, m.dropout = 0;
  m.attention.kind = self;
  m.cross_attention.kind = cross;
  if (arch == "encoder") m.num_classes = 3;
  if (arch == "encoder-decoder") m.n_encoder_layers = 1;
  return m;
}

TEST(Capabilities, CausalRequestOnABidirectionalOnlyMechanism) {
  Throwaway t("test-bidirectional-only", {.bidirectional = true});
  expect_error<ValueError>([&] { make_mechanism(t.name, cfg(true, false, 3)); },
                           {"layer 3: attention 'test-bidirectional-only' cannot be causal", "full, flash"});
  EXPECT_NO_THROW(make_mechanism(t.name, cfg(false)));
  expect_error<ValueError>([&] { models::LanguageModel(model("decoder", t.name)); },
                           {"layer 0: attention 'test-bidirectional-only' cannot be causal"});
  EXPECT_NO_THROW(models::SequenceClassifier(model("encoder", t.name)));
}

TEST(Capabilities, BidirectionalRequestOnACausalOnlyMechanism) {
  Throwaway t("test-causal-only", {.causal = true});
  expect_error<ValueError>([&] { make_mechanism(t.name, cfg(false)); },
                           {"attention 'test-causal-only' cannot be bidirectional", "encoder"});
  expect_error<ValueError>([&] { models::SequenceClassifier(model("encoder", t.name)); },
                           {"layer 0: attention 'test-causal-only' cannot be bidirectional"});
}

TEST(Capabilities, CrossAttentionOnAMechanismWithoutIt) {
  Throwaway t("test-no-cross", {.causal = true, .bidirectional = true});
  expect_error<ValueError>([&] { make_mechanism(t.name, cfg(false, true, 1)); },
                           {"layer 1: attention 'test-no-cross' cannot be cross-attention"});
  expect_error<ValueError>([&] { models::EncoderDecoder(model("encoder-decoder", "flash", t.name)); },
                           {"layer 0: attention 'test-no-cross' cannot be cross-attention"});
  // The cross-attention is its own choice: the self-attention may lack it.
  EXPECT_NO_THROW(models::EncoderDecoder(model("encoder-decoder", t.name, "flash")));
}

TEST(Capabilities, PaddingMaskOnAMechanismThatCannotHonourIt) {
  Throwaway t("test-no-padding", {.causal = true, .bidirectional = true});
  auto m = make_mechanism(t.name, cfg(false, false, 2));
  Tensor x = Tensor::zeros({1, 4, 8}), mask = Tensor::zeros({1, 4}, DType::Bool);
  expect_error<ValueError>([&] { m->forward(x, {}, mask); },
                           {"layer 2: attention 'test-no-padding' cannot honour a padding mask", "full"});
  EXPECT_NO_THROW(m->forward(x));
  models::SequenceClassifier clf(model("encoder", t.name));
  Tensor ids = Tensor::zeros({1, 4}, DType::Int64);
  expect_error<ValueError>([&] { clf.forward(ids, mask); }, {"cannot honour a padding mask"});
}

TEST(Capabilities, FixedLengthMechanismGivenALongerSequence) {
  Throwaway t("test-fixed", {.causal = true, .bidirectional = true, .fixed_length = true});
  MechanismConfig no_len = cfg(false);
  no_len.max_len = 0;
  expect_error<ValueError>([&] { make_mechanism(t.name, no_len); }, {"fixed-length", "max_len"});
  auto m = make_mechanism(t.name, cfg(false, false, 4));
  EXPECT_NO_THROW(m->forward(Tensor::zeros({1, 16, 8})));
  expect_error<ValueError>(
      [&] {
        m->forward(Tensor::zeros({1, 17, 8}));
      },
      {"layer 4: attention 'test-fixed'", "length 17", "max_len = 16"});
  auto causal = make_mechanism(t.name, cfg(true));
  auto state = causal->start(1);
  causal->step(Tensor::zeros({1, 10, 8}), *state);
  expect_error<ValueError>(
      [&] {
        causal->step(Tensor::zeros({1, 7, 8}), *state);
      },
      {"10 + 7 tokens exceed", "max_len = 16"});
}

TEST(Capabilities, AttentionDropoutOnAMechanismWithoutProbabilities) {
  MechanismConfig c = cfg(true);
  c.dropout = 0.1f;
  expect_error<ValueError>([&] { make_mechanism("performer", c); },
                           {"attention 'performer' has no attention probabilities to drop", "full, flash"});
  EXPECT_NO_THROW(make_mechanism("flash", c));
  models::ModelConfig m = model("decoder", "linear");
  m.attention_dropout = 0.1f;
  expect_error<ValueError>([&] { models::LanguageModel lm(m); }, {"layer 0: attention 'linear'"});
}

TEST(Capabilities, EveryCausalMechanismStreamsThroughTheFallback) {
  Throwaway t("test-causal-mean", {.causal = true, .bidirectional = true});
  auto m = make_mechanism(t.name, cfg(true));
  EXPECT_NE(m->streaming_path().find("fallback"), std::string::npos);
  rng::Generator gen(5);
  Tensor x = testing::normal({2, 9, 8}, gen);
  Tensor full = m->forward(x).contiguous_data();
  auto state = m->start(2);
  Tensor a = m->step(contiguous(slice(x, 1, 0, 4)), *state).contiguous_data();
  Tensor b = m->step(contiguous(slice(x, 1, 4, 9)), *state).contiguous_data();
  EXPECT_EQ(state->length(), 9);
  for (int64_t bb = 0; bb < 2; ++bb)
    for (int64_t i = 0; i < 9; ++i)
      for (int64_t c = 0; c < 8; ++c) {
        const float got =
            i < 4 ? a.data<float>()[(bb * 4 + i) * 8 + c] : b.data<float>()[(bb * 5 + i - 4) * 8 + c];
        EXPECT_EQ(got, full.data<float>()[(bb * 9 + i) * 8 + c]);
      }
  // A whole model generates through it and says so.
  models::LanguageModel lm(model("decoder", t.name));
  lm.eval();
  EXPECT_EQ(lm.streaming_summary(), "layers 0-1 test-causal-mean: " + m->streaming_path());
  Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4, 5}, {1, 5});
  Tensor logits = lm.forward(ids).contiguous_data();
  auto decode = lm.start_decoding(1);
  lm.step(decode, contiguous(slice(ids, 1, 0, 2)));
  Tensor last = lm.step(decode, contiguous(slice(ids, 1, 2, 5))).contiguous_data();
  for (int64_t i = 0; i < 3 * 256; ++i)
    EXPECT_NEAR(last.data<float>()[i], logits.data<float>()[2 * 256 + i], 1e-5);
  // Streaming is for causal self-attention only.
  auto bidir = make_mechanism(t.name, cfg(false));
  expect_error<ValueError>([&] { bidir->start(1); }, {"streaming is for causal self-attention"});
}

TEST(Registry, IncompleteOrDuplicateEntriesAreRejected) {
  MechanismEntry e;
  e.name = "test-incomplete";
  expect_error<ValueError>([&] { register_mechanism(e); }, {"'test-incomplete' is incomplete"});
  Throwaway t("test-once", {.bidirectional = true});
  expect_error<ValueError>([&] { Throwaway again("test-once", {.bidirectional = true}); },
                           {"already registered"});
  MechanismEntry p = find_mechanism("flash");
  p.name = "test-pattern-less";
  p.pattern = nullptr;
  expect_error<ValueError>([&] { register_mechanism(p); }, {"softmax-pattern", "no pattern"});
  expect_error<ValueError>([&] { find_mechanism("nope"); },
                           {"unknown name 'nope'", "full, flash, performer, linear"});
  expect_error<ValueError>([&] { attention_pattern("performer", 4, 4, 1, false); }, {"not pattern-based"});
}

}  // namespace
}  // namespace eformer::attention
