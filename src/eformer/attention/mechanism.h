// The sequence-mixer interface (DESIGN.md, "The attention interface"). A mechanism maps
// x [B, N, D] (and, for cross-attention, a memory [B, M, D]) to [B, N, D], owns its parameters,
// and declares what it supports in its registry entry (registry.h). The base class enforces those
// capabilities: at construction (a causal request on a mechanism without a causal form, ...) and
// at every call (a padding mask it cannot honour, a sequence longer than a fixed-length
// mechanism's max_len), each a ValueError naming the layer, the mechanism and what is missing,
// before any kernel runs. Subclasses implement mix() (and, for a native streaming form,
// start_native() / step_native()); every causal mechanism can stream: without a native step the
// base class keeps the inputs and recomputes (the fallback documented at start()).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eformer/attention/options.h"
#include "eformer/nn/module.h"

namespace eformer::attention {

struct Capabilities {
  bool causal = false;         // has a causal form (decoder self-attention)
  bool bidirectional = false;  // has a bidirectional form (encoder self-attention)
  bool cross = false;          // accepts a memory (cross-attention)
  bool padding_mask = false;   // honours a key mask
  bool recurrent = false;      // a native streaming step (else generation uses the fallback)
  bool fixed_length = false;   // parameters sized by max_len; longer sequences are an error
  bool dropout = false;        // has attention probabilities that attention dropout can drop
};
// Every capability as (name, value), in declaration order: the one list that listings, messages and
// the Python dict are made from.
std::vector<std::pair<const char*, bool>> capability_flags(const Capabilities& c);
// "causal, bidirectional, cross, padding_mask" (the ones that are true), for messages and listings.
std::string describe(const Capabilities& c);

class Mechanism;

// What every mechanism is built from: the model's sizes and settings plus its own options (JSON,
// parsed into a typed struct by the mechanism; unknown option names are a ValueError listing the
// valid ones).
struct MechanismConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  bool causal = false;   // self-attention in a decoder
  bool cross = false;    // the cross-attention of an encoder-decoder
  int64_t max_len = 0;   // the model's context length (fixed-length mechanisms need it > 0)
  int64_t layer = -1;    // the layer index, for messages (-1: a standalone mechanism)
  float dropout = 0.0f;  // attention dropout on the probabilities (training mode only)
  // The model's position scheme: "none" | "learned" | "sinusoidal" | "rotary". Each mechanism
  // decides what it means to it (the multi-head family rotates q and k for "rotary").
  std::string positions = "none";
  nlohmann::json options = nlohmann::json::object();
  // The first mechanism of the same kind in this layer's stack (null standalone and in that first layer):
  // where a mechanism shares parameters across layers (Linformer's layerwise E), later layers use its.
  const Mechanism* shared_from = nullptr;
};

// Per-sequence streaming state (e.g. a KV cache, or a linear-attention state S, z). Made by a
// mechanism's start() and only usable with that mechanism.
struct RecurrentState {
  virtual ~RecurrentState() = default;
  virtual int64_t length() const = 0;  // tokens consumed so far
  int64_t batch = 0;
  const void* owner = nullptr;  // the mechanism that made it
};

class Mechanism : public nn::Module {
 public:
  // name: the registry name (its entry gives the capabilities). Checks the config against them:
  // ValueError "layer 3: attention 'x' has no causal form; ..." and likewise for bidirectional,
  // cross and fixed_length (max_len > 0); d_model and n_heads > 0.
  Mechanism(std::string type_name, std::string name, MechanismConfig config);

  const std::string& name() const { return name_; }
  const MechanismConfig& config() const { return config_; }
  const Capabilities& capabilities() const { return caps_; }
  // "layer 3: attention 'flash'" (or "attention 'flash'" standalone), the prefix of every message.
  std::string label() const;

  // x [B, N, D] -> [B, N, D]. memory [B, M, D] for cross-attention (undefined for
  // self-attention); key_mask Bool [B, M or N], true = a real token (undefined: no padding).
  // Checks every input and capability, then calls mix().
  Tensor forward(const Tensor& x, const Tensor& memory = {}, const Tensor& key_mask = {});

  // Streaming (causal self-attention only): a fresh state for `batch` sequences; then step()
  // consumes x_t [B, T, D] (T >= 1 new tokens) and returns their outputs [B, T, D], equal to the
  // parallel causal pass. With capabilities().recurrent the mechanism's own step is used (e.g. a
  // KV cache, O(1) state per token for the kernelized family). Otherwise the fallback keeps every
  // input so far ([B, T, D]) and recomputes the causal pass over all of them, returning the last
  // T rows: O(T) work per token (O(T^2) per token for a quadratic mechanism), documented and
  // reported by streaming_path().
  std::unique_ptr<RecurrentState> start(int64_t batch) const;
  Tensor step(const Tensor& x_t, RecurrentState& state);
  // "native" or "fallback (recompute over the kept inputs, O(T) per token)".
  std::string streaming_path() const;

 protected:
  virtual Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) = 0;
  // Native streaming, for mechanisms whose entry declares recurrent. The inputs are checked.
  virtual std::unique_ptr<RecurrentState> start_native(int64_t batch) const;
  virtual Tensor step_native(const Tensor& x_t, RecurrentState& state);
  // The attention dropout to apply now: config().dropout in training mode, else 0.
  float active_dropout() const { return is_training() ? config_.dropout : 0.0f; }

  MechanismConfig config_;

 private:
  void check_sequence(const Tensor& t, const char* what) const;
  std::string name_;
  Capabilities caps_;
};

}  // namespace eformer::attention
