// Model configuration: parsed from JSON (presets/*.json, checkpoints), strict: unknown keys,
// wrong types and invalid values are ValueErrors naming the key, the value and what is valid.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace eformer::models {

// In JSON either a name ("flash") or {"kind": "flash", "options": {...}}; to_json writes the object.
struct AttentionChoice {
  std::string kind = "flash";
  nlohmann::json options = nlohmann::json::object();
};

// Recurrent memory across segments (arch "decoder" only): "none"; "xl" (Transformer-XL, Dai et al.
// 2019: each layer attends over the last mem_len hidden states of the previous segments with
// relative positions); "compressive" (Rae et al. 2020: memories evicted from the mem_len slots are
// compressed at compression_rate into cmem_len more slots by `compression`, one of max_pool,
// mean_pool, conv, dilated_conv, most_used). Either needs positions "relative" (the default when a
// memory is given); max_len is then the segment length.
struct MemoryConfig {
  std::string kind = "none";
  int64_t mem_len = 0;
  int64_t cmem_len = 0;
  int64_t compression_rate = 0;
  std::string compression = "conv";
  bool operator==(const MemoryConfig&) const = default;
};

struct ModelConfig {
  std::string arch = "decoder";  // "decoder" (causal LM) | "encoder" (classifier) | "encoder-decoder"
  int64_t vocab_size = 256;
  int64_t d_model = 256;
  int64_t n_heads = 4;
  int64_t n_layers = 4;          // decoder layers (and encoder layers for "encoder")
  int64_t n_encoder_layers = 0;  // "encoder-decoder" only
  int64_t d_ff = 1024;
  int64_t max_len = 256;  // context length
  float dropout = 0.1f;
  bool pre_ln = true;                 // false: post-LN (the original Transformer)
  std::string positions = "learned";  // "learned" | "sinusoidal" | "rotary" | "axial" | "relative" (memory)
  // positions "axial" (the Reformer's): the grid [n1, n2] (n1 n2 >= max_len) and the widths
  // [d1, d2] (d1 + d2 = d_model) of its two tables; empty = automatic (axial_layout).
  std::vector<int64_t> axial_shape, axial_dims;
  bool tie_weights = true;            // LM head shares the token embedding
  int64_t num_classes = 0;            // "encoder" classifier head
  // The classifier's pooling ("encoder"): "mean" over the real tokens | "pma", the Set Transformer's
  // pooling by multihead attention with one learned seed (Lee et al. 2019, eq. 11; models/pooling.h).
  std::string pooling = "mean";
  int64_t ffn_chunks = 1;
  std::string activation = "gelu";               // the feed-forward's: "gelu" | "gelu_tanh" | "relu"
  AttentionChoice attention;                     // every layer's mechanism...
  std::vector<AttentionChoice> layer_attention;  // ...unless overridden per layer (empty or n_layers long)
  AttentionChoice cross_attention;               // "encoder-decoder": the decoder's cross-attention
  float attention_dropout = 0.0f;                // dropout on attention probabilities (mechanisms with them)
  // Block memory policy: "plain" (keep activations) | "recompute" (per-block activation
  // checkpointing, the Sparse Transformer's recompute: each block's activations are rebuilt in the
  // backward pass, every dropout draw replayed; memory per block drops to its input).
  std::string block = "plain";
  MemoryConfig memory;  // recurrent memory across segments (kind "none": a plain context window)
};

// The axial grid and widths of `c` (positions "axial"): axial_shape, or n2 = the smallest power
// of two with n2^2 >= max_len and n1 = ceil(max_len / n2); axial_dims, or [d_model / 2, d_model - d_model / 2].
struct AxialLayout {
  std::array<int64_t, 2> shape, dims;
};
AxialLayout axial_layout(const ModelConfig& c);

// Keys missing from `j` keep the defaults above. Also validates the result (validate_model_config).
ModelConfig parse_model_config(const nlohmann::json& j);
// Every key, so parse_model_config(to_json(c)) == c.
nlohmann::json to_json(const ModelConfig& c);
// The cross-field checks (d_model % n_heads, layer_attention's length, arch-specific sizes, ...);
// ValueError naming the key, the value and what is valid.
void validate_model_config(const ModelConfig& c);
// The mechanism of layer i (decoder layers; the encoder's layers for arch "encoder") after
// overrides; i outside [0, n_layers) is an IndexError.
const AttentionChoice& attention_for_layer(const ModelConfig& c, int64_t layer);

}  // namespace eformer::models
