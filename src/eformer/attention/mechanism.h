// The sequence-mixer interface (DESIGN.md, "The attention interface") and its registry.
// A mechanism maps x [B, N, D] (and, for cross-attention, memory [B, M, D]) to [B, N, D], owns its
// parameters, and declares what it supports. Adding a mechanism touches: its own file under
// attention/, one registry line (registry.cpp), its tests, its docs section, its benchmark entry.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eformer/attention/options.h"
#include "eformer/nn/module.h"

namespace eformer::attention {

struct Capabilities {
  bool causal = false;         // can run with a causal mask
  bool bidirectional = false;  // can run without one
  bool cross = false;          // accepts a memory (cross-attention)
  bool padding_mask = false;   // honours a key mask
  bool recurrent = false;      // implements step() for streaming generation
};

// What every mechanism is built from: the model's sizes plus its own options (JSON, parsed into a
// typed struct by the mechanism; unknown option names are a ValueError listing the valid ones).
struct MechanismConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  bool causal = false;  // self-attention in a decoder
  bool cross = false;   // the cross-attention of an encoder-decoder
  nlohmann::json options = nlohmann::json::object();
};

// Per-sequence streaming state (e.g. a KV cache, or a linear-attention state S, z).
struct RecurrentState {
  virtual ~RecurrentState() = default;
  virtual int64_t length() const = 0;  // tokens consumed so far
};

class Mechanism : public nn::Module {
 public:
  using nn::Module::Module;
  virtual Capabilities capabilities() const = 0;
  // x [B, N, D] -> [B, N, D]. memory [B, M, D] (undefined for self-attention); key_mask Bool
  // [B, M or N], true = a real token (undefined: no padding).
  virtual Tensor forward(const Tensor& x, const Tensor& memory = {}, const Tensor& key_mask = {}) = 0;
  // Streaming: a fresh state for `batch` sequences; then step() consumes x_t [B, T, D] (T new
  // tokens, T >= 1) and returns their outputs [B, T, D], equal to the parallel causal pass.
  // The defaults throw ValueError naming the mechanism.
  virtual std::unique_ptr<RecurrentState> start(int64_t batch) const;
  virtual Tensor step(const Tensor& x_t, RecurrentState& state);
};

// Builds a mechanism by name ("full", "flash", ...); unknown names are a ValueError listing the
// registered ones.
std::shared_ptr<Mechanism> make_mechanism(const std::string& name, const MechanismConfig& config);
std::vector<std::string> mechanism_names();

}  // namespace eformer::attention
