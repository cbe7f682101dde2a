#include "eformer/models/language_model.h"

#include "eformer/attention/relative_usage.h"
#include "eformer/autograd/autograd.h"
#include "eformer/models/compressor.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/loss.h"
#include "eformer/ops/matmul.h"
#include "eformer/ops/reduce.h"
#include "eformer/ops/shape.h"

namespace eformer::models {

Tensor lm_logits(const Tensor& h, const TokenEmbedding& embed, const nn::Linear* head) {
  if (head) return head->forward(h);
  return matmul(h, embed.tokens()->weight(), false, true);  // [B, N, D] x [V, D]^T
}

LanguageModel::LanguageModel(const ModelConfig& config) : Module("LanguageModel"), config_(config) {
  validate_model_config(config_);
  EF_CHECK(config_.arch == "decoder", ValueError, "LanguageModel: arch = '", config_.arch,
           "'; expected 'decoder' (use SequenceClassifier or EncoderDecoder)");
  embed_ = register_module("embed", std::make_shared<TokenEmbedding>(config_));
  blocks_ = register_module("blocks", build_blocks(config_, config_.n_layers, Stack::Decoder));
  if (config_.pre_ln) ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(config_.d_model));
  if (!config_.tie_weights)
    head_ = register_module("head", std::make_shared<nn::Linear>(config_.d_model, config_.vocab_size, false));
  if (config_.memory.kind == "compressive") {
    compressors_ = register_module("compressors", std::make_shared<nn::ModuleList>());
    for (int64_t i = 0; i < config_.n_layers; ++i)
      compressors_->push_back(std::make_shared<Compressor>(config_.memory.compression, config_.d_model,
                                                           config_.memory.compression_rate));
  }
}

std::string LanguageModel::describe() const {
  return detail::concat("LanguageModel(vocab=", config_.vocab_size, ", d_model=", config_.d_model,
                        ", n_heads=", config_.n_heads, ", n_layers=", config_.n_layers,
                        ", max_len=", config_.max_len, ", positions=", config_.positions, ", ",
                        config_.pre_ln ? "pre-LN" : "post-LN", config_.tie_weights ? ", tied" : ", untied",
                        ")");
}

Tensor LanguageModel::final_norm(const Tensor& h) const { return ln_f_ ? ln_f_->forward(h) : h; }

Tensor LanguageModel::head(const Tensor& h) const { return lm_logits(final_norm(h), *embed_, head_.get()); }

const Tensor& LanguageModel::head_weight() const { return head_ ? head_->weight() : embed_->tokens()->weight(); }

Tensor LanguageModel::forward(const Tensor& ids) { return head(hidden(ids)); }

void LanguageModel::check_ids(const Tensor& ids) const {
  EF_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::Int64, ShapeError, where(), "ids are ",
           ids.defined() ? ids.describe() : std::string("undefined"), "; expected Int64 [batch, seq]");
  EF_CHECK(ids.size(1) <= config_.max_len, ValueError, where(), "sequence length ", ids.size(1),
           " exceeds max_len = ", config_.max_len, has_memory() ? " (the segment length; the memory carries the rest)" : "");
}

Tensor LanguageModel::hidden(const Tensor& ids) {
  check_ids(ids);
  if (has_memory()) {  // one segment with no memory
    SegmentMemory none = start_memory();
    return hidden(ids, none);
  }
  return run_blocks(*blocks_, embed_->forward(ids));
}

SegmentMemory LanguageModel::start_memory(int64_t mem_len) const {
  EF_CHECK(has_memory(), ValueError, where(), "this model has no memory (memory.kind = 'none')");
  EF_CHECK(mem_len >= 0, ValueError, where(), "mem_len = ", mem_len, "; expected >= 0 (0: the config's ",
           config_.memory.mem_len, ")");
  SegmentMemory m;
  m.mem_len = mem_len > 0 ? mem_len : config_.memory.mem_len;
  m.cmem_len = config_.memory.cmem_len;
  return m;
}

namespace {
// The last `keep` rows (dim 1) of [old; fresh] and the rows before them (evicted), detached:
// Transformer-XL's memory update.
struct Kept {
  Tensor kept, evicted;
};
Kept keep_last(const Tensor& old, const Tensor& fresh, int64_t keep) {
  autograd::NoGradGuard no_grad;
  Tensor all = old.defined() && old.size(1) > 0 ? cat({old.detach(), fresh.detach()}, 1) : fresh.detach();
  const int64_t L = all.size(1), k = std::min(L, keep);
  return {contiguous(narrow(all, 1, L - k, k)), L > k ? narrow(all, 1, 0, L - k) : Tensor()};
}

Tensor mean_squared_error(const Tensor& a, const Tensor& b) {
  Tensor d = sub(a, b);
  return mean(mul(d, d));
}

// The usage (attention/relative_usage.h) of the keys [context; segment] of `block`'s attention for
// the segment `input` [B, N, D] (the block's input, before its LayerNorm); context may be undefined.
Tensor key_usage(const TransformerBlock& block, bool pre_ln, const Tensor& input, const Tensor& context) {
  autograd::NoGradGuard no_grad;
  auto ln1 = std::dynamic_pointer_cast<nn::LayerNorm>(block.child("ln1"));
  EF_CHECK(ln1 != nullptr, ValueError, block.describe(), ": no LayerNorm 'ln1'");
  auto norm = [&](const Tensor& t) { return pre_ln && t.defined() ? ln1->forward(t) : t; };
  return attention::relative_usage(*block.relative_attn(), norm(input), norm(context));
}
}  // namespace

Tensor LanguageModel::memory_context(const SegmentMemory& memory, int64_t layer) const {
  std::vector<Tensor> parts;
  if (!memory.compressed.empty() && memory.compressed[size_t(layer)].size(1) > 0)
    parts.push_back(memory.compressed[size_t(layer)]);
  if (!memory.layers.empty() && memory.layers[size_t(layer)].size(1) > 0) parts.push_back(memory.layers[size_t(layer)]);
  if (parts.empty()) return {};
  return parts.size() == 1 ? parts[0] : cat(parts, 1);
}

void LanguageModel::remember(SegmentMemory& memory, const std::vector<Tensor>& inputs) {
  const int64_t L = blocks_->size();
  std::vector<Tensor> next, next_compressed;
  Tensor reconstruction;
  for (int64_t i = 0; i < L; ++i) {
    Kept k = keep_last(memory.layers.empty() ? Tensor() : memory.layers[size_t(i)], inputs[size_t(i)], memory.mem_len);
    next.push_back(k.kept);
    if (!compressors_) continue;
    Tensor compressed = memory.compressed.empty() ? Tensor() : memory.compressed[size_t(i)];
    const auto& f = compressors_->get<Compressor>(i);
    const int64_t evicted = k.evicted.defined() ? k.evicted.size(1) : 0, n = evicted / f.rate() * f.rate();
    if (n > 0) {
      // Rae et al. 2020, algorithm 2: the evicted memories compressed (f_c trained by the
      // attention reconstruction only: its inputs and the attention weights are stop-gradient).
      // A remainder of fewer than `rate` oldest memories (a short last segment) is dropped.
      Tensor old = narrow(k.evicted, 1, evicted - n, n), usage;
      if (f.needs_usage()) {
        // most_used: the attention this segment's queries gave the evicted rows of [memory; segment],
        // which follow the compressed memory among the keys.
        const int64_t skip = compressed.defined() ? compressed.size(1) : 0;
        usage = narrow(key_usage(block(i), config_.pre_ln, inputs[size_t(i)], memory_context(memory, i)), 1,
                       skip + evicted - n, n);
      }
      Tensor fresh = f.forward(old, usage);
      const auto& attn = block(i).relative_attn();
      Tensor target = attn->content_attention(inputs[size_t(i)], old);
      Tensor loss = mean_squared_error(attn->content_attention(inputs[size_t(i)], fresh), target.detach());
      reconstruction = reconstruction.defined() ? add(reconstruction, loss) : loss;
      compressed = keep_last(compressed, fresh, memory.cmem_len).kept;
    }
    next_compressed.push_back(compressed.defined() ? compressed
                                                   : Tensor::empty({inputs[size_t(i)].size(0), 0, config_.d_model}));
  }
  memory.layers = std::move(next);
  if (compressors_) memory.compressed = std::move(next_compressed);
  memory.reconstruction = reconstruction;
}

Tensor LanguageModel::hidden(const Tensor& ids, SegmentMemory& memory) {
  check_ids(ids);
  EF_CHECK(has_memory(), ValueError, where(), "this model has no memory (memory.kind = 'none')");
  const int64_t L = blocks_->size();
  EF_CHECK(memory.layers.empty() || (int64_t(memory.layers.size()) == L && memory.layers[0].size(0) == ids.size(0)),
           ShapeError, where(), "the memory has ", memory.layers.size(), " layers of batch ",
           memory.layers.empty() ? 0 : memory.layers[0].size(0), "; expected ", L, " of batch ", ids.size(0),
           " (start a new one with start_memory)");
  EF_CHECK(memory.mem_len >= 1, ValueError, where(), "memory.mem_len = ", memory.mem_len, "; expected >= 1");
  Tensor h = embed_->forward(ids);
  std::vector<Tensor> inputs;
  for (int64_t i = 0; i < L; ++i) {
    inputs.push_back(h);
    h = block(i).forward_with_memory(h, memory_context(memory, i));
  }
  remember(memory, inputs);
  return h;
}

Tensor LanguageModel::forward(const Tensor& ids, SegmentMemory& memory) { return head(hidden(ids, memory)); }

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, SegmentMemory& memory, Reduction reduction) {
  check_targets(ids, targets);
  return head_loss(hidden(ids, memory), targets, reduction);
}

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, Reduction reduction) {
  check_targets(ids, targets);
  return head_loss(hidden(ids), targets, reduction);
}

void LanguageModel::check_targets(const Tensor& ids, const Tensor& targets) const {
  EF_CHECK(targets.defined() && targets.dtype() == DType::Int64 && targets.shape() == ids.shape(), ShapeError,
           where(), "loss: targets are ", targets.defined() ? targets.describe() : std::string("undefined"),
           "; expected Int64 of the ids' shape ", shape_str(ids.shape()));
}

Tensor LanguageModel::head_loss(const Tensor& h, const Tensor& targets, Reduction reduction) const {
  const int64_t rows = targets.numel();
  return linear_cross_entropy(reshape(final_norm(h), {rows, config_.d_model}), head_weight(), reshape(targets, {rows}),
                              -100, reduction);
}

DecodeState LanguageModel::start_decoding(int64_t batch, int64_t mem_len) {
  DecodeState state;
  if (has_memory()) {
    state.memory = start_memory(mem_len);
    return state;
  }
  for (int64_t i = 0; i < blocks_->size(); ++i) state.layers.push_back(block(i).self_attn()->start(batch));
  return state;
}

std::string LanguageModel::streaming_summary() const {
  if (has_memory())
    return detail::concat("layers 0-", blocks_->size() - 1, " ", config_.memory.kind,
                          " relative attention: native (memory of ", config_.memory.mem_len, " + segment of ",
                          config_.max_len, ")");
  std::string out;
  for (int64_t i = 0; i < blocks_->size();) {
    const auto& attn = block(i).self_attn();
    const std::string what = attn->name() + ": " + attn->streaming_path();
    int64_t j = i + 1;
    while (j < blocks_->size() && block(j).self_attn()->name() + ": " + block(j).self_attn()->streaming_path() == what) ++j;
    out += (out.empty() ? "" : "; ") +
           (j - i == 1 ? detail::concat("layer ", i) : detail::concat("layers ", i, "-", j - 1)) + " " + what;
    i = j;
  }
  return out;
}

Tensor LanguageModel::step_with_memory(DecodeState& state, const Tensor& ids) {
  EF_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::Int64, ShapeError, where(), "ids are ",
           ids.defined() ? ids.describe() : std::string("undefined"), "; expected Int64 [batch, seq]");
  const int64_t L = blocks_->size(), N = config_.max_len, T = ids.size(1);
  SegmentMemory& memory = state.memory;
  EF_CHECK(memory.layers.empty() || memory.layers[0].size(0) == ids.size(0), ShapeError, where(),
           "step: the state is for batch ", memory.layers.empty() ? 0 : memory.layers[0].size(0), ", ids are ",
           ids.describe());
  if (state.segment.empty()) state.segment.resize(size_t(L));
  std::vector<Tensor> outputs;
  for (int64_t t = 0; t < T;) {
    const int64_t done = state.segment[0].defined() ? state.segment[0].size(1) : 0;
    const int64_t len = std::min(T - t, N - done);  // never across a segment boundary
    Tensor h = embed_->forward(narrow(ids, 1, t, len));
    for (int64_t i = 0; i < L; ++i) {
      Tensor& seg = state.segment[size_t(i)];
      Tensor context = memory_context(memory, i);  // [compressed; memory; the segment so far]
      if (seg.defined()) context = context.defined() ? cat({context, seg}, 1) : seg;
      Tensor input = h.detach();
      h = block(i).forward_with_memory(h, context);
      seg = seg.defined() ? cat({seg, input}, 1) : input;
    }
    outputs.push_back(h);
    t += len;
    if (done + len == N) {  // the segment is complete: it moves into the memory
      remember(memory, state.segment);
      state.segment.assign(size_t(L), Tensor());
    }
  }
  state.position += T;
  return head(outputs.size() == 1 ? outputs[0] : cat(outputs, 1));
}

Tensor LanguageModel::step(DecodeState& state, const Tensor& ids) {
  if (has_memory()) return step_with_memory(state, ids);
  Tensor h = step_blocks(*blocks_, embed_->forward(ids, state.position), state.layers);
  state.position += ids.size(1);
  return head(h);
}

}  // namespace eformer::models
