// Weight transfer (train::transfer_model / transfer_state): a checkpoint's weights in a model of
// another config. Every parameter must come from the checkpoint with its shape, every checkpoint
// tensor must land somewhere, and only buffers the checkpoint lacks keep their fresh values.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "eformer/train/checkpoint.h"

#include "../test_util.h"

namespace eformer::train {
namespace {

using testing::error_of;

// A fresh seed each run, printed with every failure.
uint64_t fresh_seed() { return std::random_device{}(); }

models::ModelConfig small_decoder() {
  models::ModelConfig c;
  c.d_model = 16;
  c.n_heads = 2;
  c.n_layers = 2;
  c.d_ff = 32;
  c.max_len = 16;
  c.dropout = 0.0f;
  return c;
}

// A checkpoint in memory holding a freshly initialised model of `config` (weights seeded by `seed`).
Checkpoint checkpoint_of(const models::ModelConfig& config, uint64_t seed) {
  rng::manual_seed(seed);
  models::LanguageModel model(config);
  Checkpoint c;
  c.source = "mem.safetensors";
  c.model_config = config;
  for (const auto& [name, t] : model.state_dict()) c.model_state.emplace(name, t.detach());
  return c;
}

Tensor random_ids(std::mt19937_64& gen, int64_t B, int64_t N) {
  std::vector<int64_t> ids(static_cast<size_t>(B * N));
  for (auto& id : ids) id = int64_t(gen() % 256);
  return Tensor::from_vector(ids, {B, N});
}

Tensor random_values(std::mt19937_64& gen, const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = normal(gen);
  return Tensor::from_vector(v, shape);
}

TEST(Transfer, WithoutOverridesItEqualsLoadModel) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Checkpoint c = checkpoint_of(small_decoder(), seed);
  rng::manual_seed(seed + 1);  // the transferred model's own initialisation differs from the checkpoint's
  TransferredModel t = transfer_model(c, c.model_config);
  auto loaded = load_model(c);
  EXPECT_TRUE(t.fresh_buffers.empty());
  EXPECT_FALSE(t.model->is_training());
  auto a = t.model->state_dict(), b = loaded->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.to_vector(), b[i].second.to_vector()) << a[i].first;
  }
}

TEST(Transfer, FlashWeightsRunInAFullAttentionModelWithTheSameOutputs) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  Checkpoint c = checkpoint_of(small_decoder(), seed);
  ASSERT_EQ(c.model_config.attention.kind, "flash");
  models::ModelConfig full = c.model_config;
  full.attention.kind = "full";
  TransferredModel t = transfer_model(c, full);
  EXPECT_TRUE(t.fresh_buffers.empty());
  EXPECT_EQ(t.model->config().attention.kind, "full");
  auto flash = load_model(c);
  autograd::NoGradGuard no_grad;
  Tensor ids = random_ids(gen, 2, 16);
  std::vector<float> x = flash->forward(ids).to_vector(), y = t.model->forward(ids).to_vector();
  ASSERT_EQ(x.size(), y.size());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(x[i] - y[i])));
    max_abs = std::max(max_abs, double(std::fabs(x[i])));
  }
  EXPECT_LT(max_diff, 1e-4 * std::max(1.0, max_abs));
  // And it is not a tautology: a fresh model (no transfer) gives other logits.
  rng::manual_seed(seed + 1);
  models::LanguageModel fresh(full);
  fresh.eval();
  std::vector<float> z = fresh.forward(ids).to_vector();
  double fresh_diff = 0;
  for (size_t i = 0; i < x.size(); ++i) fresh_diff = std::max(fresh_diff, double(std::fabs(x[i] - z[i])));
  EXPECT_GT(fresh_diff, 1e-2);
}

TEST(Transfer, AnArchitectureChangeThatAddsOrDropsWeightsIsAnErrorNamingThem) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Checkpoint c = checkpoint_of(small_decoder(), seed);

  models::ModelConfig deeper = c.model_config;
  deeper.n_layers = 3;
  std::string msg = error_of<ValueError>([&] { transfer_model(c, deeper); });
  EXPECT_NE(msg.find("mem.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not in the checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("blocks.2."), std::string::npos) << msg;
  EXPECT_EQ(msg.find("blocks.1."), std::string::npos) << msg;

  models::ModelConfig shallower = c.model_config;
  shallower.n_layers = 1;
  msg = error_of<ValueError>([&] { transfer_model(c, shallower); });
  EXPECT_NE(msg.find("not in the model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("blocks.1."), std::string::npos) << msg;

  // A tensor the model has no place for (e.g. a Performer's omega into a flash model).
  Checkpoint extra = c;
  extra.model_state.emplace("blocks.0.attn.omega", Tensor::zeros({8, 8}));
  msg = error_of<ValueError>([&] { transfer_model(extra, c.model_config); });
  EXPECT_NE(msg.find("blocks.0.attn.omega"), std::string::npos) << msg;

  // A parameter the checkpoint lacks is an error, never a fresh value.
  Checkpoint missing = c;
  const std::string dropped = missing.model_state.rbegin()->first;
  missing.model_state.erase(dropped);
  msg = error_of<ValueError>([&] { transfer_model(missing, c.model_config); });
  EXPECT_NE(msg.find("1 parameter(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dropped), std::string::npos) << msg;

  // A shape change: a ShapeError naming the first tensor that does not fit, with both shapes.
  models::ModelConfig wider = c.model_config;
  wider.d_model = 32;
  const auto [first, expected] = models::LanguageModel(wider).named_parameters()[0];
  msg = error_of<ShapeError>([&] { transfer_model(c, wider); });
  EXPECT_NE(msg.find("'" + first + "'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(shape_str(c.model_state.at(first).shape())), std::string::npos) << msg;
  EXPECT_NE(msg.find(shape_str(expected.shape())), std::string::npos) << msg;
}

// A module with a parameter and a buffer at two depths, like a mechanism with random features.
class WithFeatures : public nn::Module {
 public:
  explicit WithFeatures(std::mt19937_64& gen, int64_t m = 4) : nn::Module("WithFeatures") {
    weight = &register_parameter("weight", random_values(gen, {3, 2}));
    omega = &register_buffer("omega", random_values(gen, {m, 2}));
  }
  Tensor* weight;
  Tensor* omega;
};

class Net : public nn::Module {
 public:
  explicit Net(std::mt19937_64& gen, int64_t m = 4) : nn::Module("Net") {
    bias = &register_parameter("bias", random_values(gen, {3}));
    attn = register_module("attn", std::make_shared<WithFeatures>(gen, m));
  }
  Tensor* bias;
  std::shared_ptr<WithFeatures> attn;
};

std::map<std::string, Tensor> state_of(const nn::Module& m) {
  std::map<std::string, Tensor> s;
  for (const auto& [name, t] : m.state_dict()) s.emplace(name, t.detach());
  return s;
}

TEST(TransferState, BuffersTheCheckpointLacksKeepTheirFreshValues) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  Net source(gen), target(gen);
  const std::vector<float> fresh_omega = target.attn->omega->to_vector();
  ASSERT_NE(fresh_omega, source.attn->omega->to_vector());

  // Everything present: everything loaded, buffers included.
  std::vector<std::string> fresh = transfer_state(state_of(source), target, "src");
  EXPECT_TRUE(fresh.empty());
  EXPECT_EQ(target.attn->omega->to_vector(), source.attn->omega->to_vector());

  // The buffer erased from the checkpoint: the target's own value stays, the parameters load.
  Net source2(gen), target2(gen);
  const std::vector<float> own_omega = target2.attn->omega->to_vector();
  auto state = state_of(source2);
  state.erase("attn.omega");
  const Tensor weight_handle = *target2.attn->weight;  // an optimizer's handle sees the new values
  fresh = transfer_state(state, target2, "src");
  EXPECT_EQ(fresh, std::vector<std::string>{"attn.omega"});
  EXPECT_EQ(target2.attn->omega->to_vector(), own_omega);
  EXPECT_EQ(target2.bias->to_vector(), source2.bias->to_vector());
  EXPECT_EQ(weight_handle.to_vector(), source2.attn->weight->to_vector());
  EXPECT_EQ(fresh_buffers_notice(fresh), "init: kept fresh buffers: attn.omega");
  EXPECT_EQ(fresh_buffers_notice({}), "");
  EXPECT_EQ(fresh_buffers_notice({"a.omega", "b.omega"}), "init: kept fresh buffers: a.omega, b.omega");
}

TEST(TransferState, ABufferOfAnotherShapeOrAMissingParameterChangesNothing) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  Net source(gen, /*m=*/4), target(gen, /*m=*/6);
  auto snapshot = [&] {
    std::map<std::string, std::vector<float>> v;
    for (const auto& [name, t] : target.state_dict()) v[name] = t.to_vector();
    return v;
  };
  const auto values_before = snapshot();
  std::string msg = error_of<ShapeError>([&] { transfer_state(state_of(source), target, "src.safetensors"); });
  EXPECT_NE(msg.find("src.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'attn.omega'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 2]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[6, 2]"), std::string::npos) << msg;
  EXPECT_EQ(snapshot(), values_before);  // all or nothing: the parameters were not copied either

  auto state = state_of(source);
  state.erase("attn.omega");
  state.erase("attn.weight");
  msg = error_of<ValueError>([&] { transfer_state(state, target, "src.safetensors"); });
  EXPECT_NE(msg.find("attn.weight"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("attn.omega"), std::string::npos) << msg;  // a missing buffer is not the problem
  EXPECT_EQ(snapshot(), values_before);
}

}  // namespace
}  // namespace eformer::train
