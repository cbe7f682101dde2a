#include "eformer/train/memory.h"

#include <algorithm>
#include <cstdio>

#include "eformer/core/allocator.h"
#include "eformer/core/error.h"
#include "eformer/core/tensor.h"

namespace eformer::train {
namespace {

// Every product below goes through checked_mul: the config's bounds keep them far below 2^63,
// and the check says so.
int64_t mul(int64_t a, int64_t b) { return checked_mul(a, b, "memory estimate"); }

// Parameters of one pre- or post-LN decoder block: q, k, v, o projections with biases, the
// feed-forward's two layers with biases, two layer norms (+ a cross-attention and its norm).
int64_t block_parameters(const models::ModelConfig& c, bool cross) {
  const int64_t d = c.d_model, attention = 4 * mul(d, d) + 4 * d, norm = 2 * d;
  const int64_t ffn = 2 * mul(d, c.d_ff) + c.d_ff + d;
  return attention + ffn + 2 * norm + (cross ? attention + norm : 0);
}

}  // namespace

std::string bytes_str(int64_t bytes) {
  char buf[32];
  if (bytes >= (int64_t(1) << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(bytes) / double(1 << 30));
  else std::snprintf(buf, sizeof buf, bytes >= (10 << 20) ? "%.0f MiB" : "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

std::string MemoryEstimate::describe() const {
  std::string s = bytes_str(total_bytes()) + " (parameters " + bytes_str(parameter_bytes);
  if (optimizer_bytes > 0) s += ", gradients and AdamW " + bytes_str(optimizer_bytes);
  return s + ", activations " + bytes_str(activation_bytes) + ")";
}

MemoryEstimate estimate_memory(const models::ModelConfig& c, int64_t batch_size, bool training) {
  MemoryEstimate e;
  const int64_t d = c.d_model, N = c.max_len, layers = c.n_layers + c.n_encoder_layers;
  const bool cross = c.arch == "encoder-decoder";
  e.parameters = mul(c.vocab_size, d) + (c.positions == "learned" ? mul(N, d) : 0) + 2 * d +
                 mul(c.n_layers, block_parameters(c, cross)) + mul(c.n_encoder_layers, block_parameters(c, false)) +
                 (c.tie_weights ? 0 : mul(c.vocab_size, d) + c.vocab_size) +
                 (c.memory.kind != "none" ? mul(c.n_layers, mul(d, d) - 2 * d) : 0) +  // + W_{k,R}, u, v, - biases
                 (c.memory.kind == "compressive" && (c.memory.compression == "conv" || c.memory.compression == "dilated_conv")
                      ? mul(c.n_layers, mul(mul(c.memory.compression_rate, d), d) + d)  // the compressors
                      : 0);
  e.parameter_bytes = 4 * e.parameters;
  e.optimizer_bytes = training ? 12 * e.parameters : 0;

  const int64_t tokens = mul(batch_size, N);
  int64_t one_layer_max = 0, all_layers = 0;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const auto& kind = layer < c.n_layers ? models::attention_for_layer(c, layer).kind : c.attention.kind;
    int64_t per_token = 12 * d + 3 * c.d_ff + (kind == "full" ? mul(2 * c.n_heads, N) : 0);
    // Relative attention (a memory) keeps about six [N, K] score matrices per head, K = N + memory.
    if (c.memory.kind != "none") per_token += mul(6 * c.n_heads, N + c.memory.mem_len + c.memory.cmem_len);
    one_layer_max = std::max(one_layer_max, mul(tokens, per_token));
    all_layers += mul(tokens, per_token);
  }
  // The LM head and loss run in row chunks of 16 MiB of logits (linear_cross_entropy): the logits
  // and their gradient, one chunk at a time.
  const int64_t logits = 2 * std::min(mul(tokens, c.vocab_size), (int64_t(16) << 20) / 4 + c.vocab_size);
  int64_t floats = 0;
  if (!training) floats = one_layer_max + logits;
  else if (c.block == "recompute") floats = mul(mul(tokens, d), layers) + one_layer_max + logits;
  else if (c.block == "reversible") floats = mul(mul(tokens, d), 4) + one_layer_max + logits;  // y1, y2, dy1, dy2
  else floats = all_layers + logits;
  e.activation_bytes = mul(floats, 4);
  return e;
}

void check_memory(const MemoryEstimate& e, const std::string& what, const std::string& override_hint) {
  const int64_t available = allocator::available_bytes();
  if (available < 0 || e.total_bytes() <= available) return;
  const char* reduce = e.activation_bytes >= e.parameter_bytes + e.optimizer_bytes
                           ? "reduce the batch size or the context (max_len), or use model.block=recompute or reversible"
                           : "reduce the model (d_model, d_ff, n_layers, vocab_size)";
  throw MemoryError(what + ": the run needs about " + e.describe() + " but " + bytes_str(available) +
                    " are available; " + reduce + ", or " + override_hint);
}

}  // namespace eformer::train
