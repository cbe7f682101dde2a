#include "eformer/attention/mechanism.h"

#include "eformer/attention/registry.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

// The mechanisms that have capability `has`, for "pick one of ..." in messages.
std::string names_with(bool Capabilities::*has) {
  std::string out;
  for (const auto& e : mechanisms())
    if (e.capabilities.*has) out += (out.empty() ? "" : ", ") + e.name;
  return out.empty() ? std::string("none registered") : out;
}

// The fallback streaming state: every input so far.
struct InputHistory : RecurrentState {
  Tensor x;  // [B, T, D] (undefined before the first step)
  int64_t length() const override { return x.defined() ? x.size(1) : 0; }
};

}  // namespace

std::vector<std::pair<const char*, bool>> capability_flags(const Capabilities& c) {
  return {{"causal", c.causal},       {"bidirectional", c.bidirectional},
          {"cross", c.cross},         {"padding_mask", c.padding_mask},
          {"recurrent", c.recurrent}, {"fixed_length", c.fixed_length},
          {"dropout", c.dropout}};
}

std::string describe(const Capabilities& c) {
  std::string out;
  for (const auto& [name, on] : capability_flags(c))
    if (on) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

Mechanism::Mechanism(std::string type_name, std::string name, MechanismConfig config)
    : nn::Module(std::move(type_name)),
      config_(std::move(config)),
      name_(std::move(name)),
      caps_(find_mechanism(name_).capabilities) {
  const MechanismConfig& c = config_;
  EF_CHECK(c.d_model > 0 && c.n_heads > 0, ValueError, label(), ": d_model = ", c.d_model,
           " and n_heads = ", c.n_heads, "; expected both > 0");
  EF_CHECK(c.dropout >= 0.0f && c.dropout < 1.0f, ValueError, label(), ": attention dropout = ", c.dropout,
           "; expected a probability in [0, 1)");
  if (c.cross) {
    EF_CHECK(caps_.cross, ValueError, label(),
             " cannot be cross-attention (it has no cross form); mechanisms with one: ",
             names_with(&Capabilities::cross));
  } else if (c.causal) {
    EF_CHECK(caps_.causal, ValueError, label(),
             " cannot be causal (it has no causal form, so it cannot be in a decoder); "
             "mechanisms with one: ",
             names_with(&Capabilities::causal));
  } else {
    EF_CHECK(caps_.bidirectional, ValueError, label(),
             " cannot be bidirectional (it has a causal form only, so it cannot be in an encoder); "
             "mechanisms with one: ",
             names_with(&Capabilities::bidirectional));
  }
  EF_CHECK(c.dropout == 0.0f || caps_.dropout, ValueError, label(),
           " has no attention probabilities to drop (attention_dropout = ", c.dropout,
           "); mechanisms with them: ", names_with(&Capabilities::dropout));
  EF_CHECK(
      !caps_.fixed_length || c.max_len > 0, ValueError, label(),
      " is fixed-length: it needs max_len > 0 (its parameters are sized by it); got max_len = ", c.max_len);
}

std::string Mechanism::label() const {
  const std::string mech = "attention '" + name_ + "'";
  return config_.layer >= 0 ? detail::concat("layer ", config_.layer, ": ", mech) : mech;
}

void Mechanism::check_sequence(const Tensor& t, const char* what) const {
  EF_CHECK(t.defined() && t.dim() == 3 && t.size(2) == config_.d_model && t.dtype() == DType::Float32,
           ShapeError, label(), ": ", what, " is ", t.defined() ? t.describe() : std::string("undefined"),
           "; expected float32 [batch, seq, ", config_.d_model, "]");
  EF_CHECK(!caps_.fixed_length || t.size(1) <= config_.max_len, ValueError, label(), ": ", what,
           " has length ", t.size(1), " but this mechanism is fixed-length with max_len = ", config_.max_len);
}

Tensor Mechanism::forward(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  check_sequence(x, "x");
  EF_CHECK(config_.cross == memory.defined(), ValueError, label(),
           config_.cross ? ": cross-attention needs a memory" : ": self-attention takes no memory");
  if (memory.defined()) {
    check_sequence(memory, "memory");
    EF_CHECK(memory.size(0) == x.size(0), ShapeError, label(), ": memory batch ", memory.size(0),
             " != x batch ", x.size(0));
  }
  if (key_mask.defined()) {
    EF_CHECK(caps_.padding_mask, ValueError, label(),
             " cannot honour a padding mask (key_mask); mechanisms that can: ",
             names_with(&Capabilities::padding_mask));
    const int64_t M = memory.defined() ? memory.size(1) : x.size(1);
    EF_CHECK(key_mask.dtype() == DType::Bool && key_mask.dim() == 2 && key_mask.size(0) == x.size(0) &&
                 key_mask.size(1) == M,
             ShapeError, label(), ": key_mask is ", key_mask.describe(), "; expected bool [", x.size(0), ", ",
             M, "]");
  }
  return mix(x, memory, key_mask);
}

std::unique_ptr<RecurrentState> Mechanism::start(int64_t batch) const {
  EF_CHECK(batch > 0, ValueError, label(), ": start: batch = ", batch, "; expected > 0");
  EF_CHECK(!config_.cross && config_.causal, ValueError, label(),
           ": start: streaming is for causal self-attention (this one is ",
           config_.cross ? "cross-attention" : "bidirectional", "; use forward)");
  std::unique_ptr<RecurrentState> state =
      caps_.recurrent ? start_native(batch) : std::make_unique<InputHistory>();
  state->batch = batch;
  state->owner = this;
  return state;
}

Tensor Mechanism::step(const Tensor& x_t, RecurrentState& state) {
  EF_CHECK(state.owner == this, ValueError, label(),
           ": step: the state was not made by this mechanism's start()");
  check_sequence(x_t, "x_t");
  EF_CHECK(x_t.size(0) == state.batch, ShapeError, label(), ": step: x_t batch ", x_t.size(0),
           " != the state's batch ", state.batch);
  EF_CHECK(!caps_.fixed_length || state.length() + x_t.size(1) <= config_.max_len, ValueError, label(),
           ": step: ", state.length(), " + ", x_t.size(1),
           " tokens exceed the fixed length max_len = ", config_.max_len);
  if (caps_.recurrent) return step_native(x_t, state);
  auto& history = static_cast<InputHistory&>(state);
  history.x = history.x.defined() ? cat({history.x, x_t.detach()}, 1) : contiguous(x_t.detach());
  const int64_t T = history.x.size(1), n = x_t.size(1);
  return contiguous(slice(mix(history.x, {}, {}), 1, T - n, T));
}

std::string Mechanism::streaming_path() const {
  return caps_.recurrent ? "native" : "fallback (recompute over the kept inputs, O(T) per token)";
}

std::unique_ptr<RecurrentState> Mechanism::start_native(int64_t) const {
  throw ValueError(detail::concat(label(), ": declares recurrent but implements no start_native"));
}

Tensor Mechanism::step_native(const Tensor&, RecurrentState&) {
  throw ValueError(detail::concat(label(), ": declares recurrent but implements no step_native"));
}

}  // namespace eformer::attention
