#include "eformer/models/config.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

#include "eformer/attention/registry.h"
#include "eformer/core/error.h"

namespace eformer::models {
namespace {

using nlohmann::json;

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

void check_one_of(const std::string& key, const std::string& value, const std::vector<std::string>& valid) {
  EF_CHECK(std::find(valid.begin(), valid.end(), value) != valid.end(), ValueError, "model config: ", key,
           " = '", value, "'; expected one of ", join(valid));
}

int64_t get_int(const std::string& key, const json& v) {
  EF_CHECK(v.is_number_integer(), ValueError, "model config: ", key, " = ", v.dump(),
           "; expected an integer");
  return v.get<int64_t>();
}
bool get_bool(const std::string& key, const json& v) {
  EF_CHECK(v.is_boolean(), ValueError, "model config: ", key, " = ", v.dump(), "; expected true or false");
  return v.get<bool>();
}
std::string get_string(const std::string& key, const json& v) {
  EF_CHECK(v.is_string(), ValueError, "model config: ", key, " = ", v.dump(), "; expected a string");
  return v.get<std::string>();
}
float get_float(const std::string& key, const json& v) {
  EF_CHECK(v.is_number(), ValueError, "model config: ", key, " = ", v.dump(), "; expected a number");
  return v.get<float>();
}

AttentionChoice get_attention(const std::string& key, const json& v) {
  AttentionChoice a;
  if (v.is_string()) {
    a.kind = v.get<std::string>();
  } else if (v.is_object()) {
    for (const auto& [k, value] : v.items()) {
      if (k == "kind") {
        a.kind = get_string(key + ".kind", value);
      } else if (k == "options") {
        EF_CHECK(value.is_object(), ValueError, "model config: ", key, ".options = ", value.dump(),
                 "; expected a JSON object");
        a.options = value;
      } else {
        throw ValueError(
            detail::concat("model config: unknown key '", key, ".", k, "'; valid keys: kind, options"));
      }
    }
  } else {
    throw ValueError(detail::concat("model config: ", key, " = ", v.dump(),
                                    "; expected a mechanism name or {\"kind\": ..., \"options\": {...}}"));
  }
  check_one_of(key + ".kind", a.kind, attention::mechanism_names());
  attention::find_mechanism(a.kind).check_options(a.options);
  return a;
}

// [] or [a, b] of integers.
std::vector<int64_t> get_pair(const std::string& key, const json& v) {
  EF_CHECK(v.is_array() && (v.empty() || v.size() == 2), ValueError, "model config: ", key, " = ", v.dump(),
           "; expected [] (automatic) or two integers");
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(get_int(detail::concat(key, "[", i, "]"), v[i]));
  return out;
}

json attention_json(const AttentionChoice& a) { return json{{"kind", a.kind}, {"options", a.options}}; }

// A float as the shortest decimal that reads back to it (0.1f -> 0.1, not 0.10000000149).
double tidy(float x) {
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, double(x));
    if (std::strtof(buf, nullptr) == x) break;
  }
  return std::strtod(buf, nullptr);
}

using Setter = std::function<void(ModelConfig&, const json&)>;

MemoryConfig get_memory(const json& v) {
  EF_CHECK(v.is_object(), ValueError, "model config: memory = ", v.dump(),
           "; expected {\"kind\": \"xl\" | \"compressive\" | \"none\", \"mem_len\": ...}");
  MemoryConfig m;
  for (const auto& [k, value] : v.items()) {
    if (k == "kind") m.kind = get_string("memory.kind", value);
    else if (k == "mem_len") m.mem_len = get_int("memory.mem_len", value);
    else if (k == "cmem_len") m.cmem_len = get_int("memory.cmem_len", value);
    else if (k == "compression_rate") m.compression_rate = get_int("memory.compression_rate", value);
    else if (k == "compression") m.compression = get_string("memory.compression", value);
    else
      throw ValueError(detail::concat("model config: unknown key 'memory.", k,
                                      "'; valid keys: kind, mem_len, cmem_len, compression_rate, compression"));
  }
  return m;
}

void validate_memory(const ModelConfig& c) {
  const MemoryConfig& m = c.memory;
  check_one_of("memory.kind", m.kind, {"none", "xl", "compressive"});
  check_one_of("memory.compression", m.compression, {"max_pool", "mean_pool", "conv", "dilated_conv", "most_used"});
  EF_CHECK((m.kind == "none") == (c.positions != "relative"), ValueError, "model config: positions = '",
           c.positions, "' with memory.kind = '", m.kind,
           "'; a memory needs positions 'relative' (Transformer-XL's relative encodings) and 'relative' needs a memory");
  if (m.kind == "none") {
    EF_CHECK(m.mem_len == 0 && m.cmem_len == 0 && m.compression_rate == 0, ValueError,
             "model config: memory.mem_len, cmem_len and compression_rate are for memory.kind 'xl' or 'compressive'");
    return;
  }
  EF_CHECK(c.arch == "decoder", ValueError, "model config: memory.kind = '", m.kind,
           "' is for arch 'decoder' (a causal language model); arch is '", c.arch, "'");
  EF_CHECK(m.mem_len >= 1 && m.mem_len <= (int64_t(1) << 24), ValueError, "model config: memory.mem_len = ",
           m.mem_len, "; expected >= 1 and at most 16777216");
  EF_CHECK(c.block != "reversible", ValueError,
           "model config: block = 'reversible' cannot carry a memory (memory.kind = '", m.kind,
           "'); use 'plain' or 'recompute'");
  EF_CHECK(c.layer_attention.empty() && c.attention.kind == "flash" && c.attention.options.empty(), ValueError,
           "model config: memory.kind = '", m.kind,
           "' brings its own relative attention; remove 'attention' and 'layer_attention'");
  EF_CHECK(c.d_model % 2 == 0, ValueError, "model config: d_model = ", c.d_model,
           " must be even for the sinusoidal relative encodings of memory.kind '", m.kind, "'");
  if (m.kind == "xl") {
    EF_CHECK(m.cmem_len == 0 && m.compression_rate == 0, ValueError,
             "model config: memory.cmem_len and compression_rate are for memory.kind 'compressive'");
  } else {
    EF_CHECK(m.cmem_len >= 1 && m.cmem_len <= (int64_t(1) << 24) && m.compression_rate >= 1 &&
                 m.compression_rate <= m.mem_len,
             ValueError, "model config: memory.kind 'compressive' needs cmem_len >= 1 and compression_rate in [1, mem_len = ",
             m.mem_len, "]; got cmem_len = ", m.cmem_len, ", compression_rate = ", m.compression_rate);
    // Whole windows of c are evicted when the segment and the memory are multiples of c.
    EF_CHECK(c.max_len % m.compression_rate == 0 && m.mem_len % m.compression_rate == 0, ValueError,
             "model config: memory.compression_rate = ", m.compression_rate, " must divide max_len = ", c.max_len,
             " (the segment) and mem_len = ", m.mem_len);
  }
}

const std::vector<std::pair<std::string, Setter>>& setters() {
  static const std::vector<std::pair<std::string, Setter>> s = {
      {"arch", [](ModelConfig& c, const json& v) { c.arch = get_string("arch", v); }},
      {"vocab_size", [](ModelConfig& c, const json& v) { c.vocab_size = get_int("vocab_size", v); }},
      {"d_model", [](ModelConfig& c, const json& v) { c.d_model = get_int("d_model", v); }},
      {"n_heads", [](ModelConfig& c, const json& v) { c.n_heads = get_int("n_heads", v); }},
      {"n_layers", [](ModelConfig& c, const json& v) { c.n_layers = get_int("n_layers", v); }},
      {"n_encoder_layers",
       [](ModelConfig& c, const json& v) { c.n_encoder_layers = get_int("n_encoder_layers", v); }},
      {"d_ff", [](ModelConfig& c, const json& v) { c.d_ff = get_int("d_ff", v); }},
      {"max_len", [](ModelConfig& c, const json& v) { c.max_len = get_int("max_len", v); }},
      {"dropout", [](ModelConfig& c, const json& v) { c.dropout = get_float("dropout", v); }},
      {"pre_ln", [](ModelConfig& c, const json& v) { c.pre_ln = get_bool("pre_ln", v); }},
      {"positions", [](ModelConfig& c, const json& v) { c.positions = get_string("positions", v); }},
      {"tie_weights", [](ModelConfig& c, const json& v) { c.tie_weights = get_bool("tie_weights", v); }},
      {"num_classes", [](ModelConfig& c, const json& v) { c.num_classes = get_int("num_classes", v); }},
      {"ffn_chunks", [](ModelConfig& c, const json& v) { c.ffn_chunks = get_int("ffn_chunks", v); }},
      {"activation", [](ModelConfig& c, const json& v) { c.activation = get_string("activation", v); }},
      {"attention", [](ModelConfig& c, const json& v) { c.attention = get_attention("attention", v); }},
      {"cross_attention",
       [](ModelConfig& c, const json& v) { c.cross_attention = get_attention("cross_attention", v); }},
      {"attention_dropout",
       [](ModelConfig& c, const json& v) { c.attention_dropout = get_float("attention_dropout", v); }},
      {"block", [](ModelConfig& c, const json& v) { c.block = get_string("block", v); }},
      {"pooling", [](ModelConfig& c, const json& v) { c.pooling = get_string("pooling", v); }},
      {"axial_shape", [](ModelConfig& c, const json& v) { c.axial_shape = get_pair("axial_shape", v); }},
      {"axial_dims", [](ModelConfig& c, const json& v) { c.axial_dims = get_pair("axial_dims", v); }},
      {"memory", [](ModelConfig& c, const json& v) { c.memory = get_memory(v); }},
      {"layer_attention",
       [](ModelConfig& c, const json& v) {
         EF_CHECK(v.is_array(), ValueError, "model config: layer_attention = ", v.dump(),
                  "; expected a list of mechanisms, one per layer");
         c.layer_attention.clear();
         for (size_t i = 0; i < v.size(); ++i)
           c.layer_attention.push_back(get_attention(detail::concat("layer_attention[", i, "]"), v[i]));
       }},
  };
  return s;
}

}  // namespace

ModelConfig parse_model_config(const json& j) {
  EF_CHECK(j.is_object(), ValueError, "model config: expected a JSON object, got ", j.dump());
  ModelConfig c;
  for (const auto& [key, value] : j.items()) {
    const auto& s = setters();
    auto it = std::find_if(s.begin(), s.end(), [&k = key](const auto& e) { return e.first == k; });
    if (it == s.end()) {
      std::vector<std::string> valid;
      for (const auto& e : s) valid.push_back(e.first);
      throw ValueError(detail::concat("model config: unknown key '", key, "'; valid keys: ", join(valid)));
    }
    it->second(c, value);
  }
  // A memory brings relative positions unless positions are given (then they are checked).
  if (c.memory.kind != "none" && !j.contains("positions")) c.positions = "relative";
  validate_model_config(c);
  return c;
}

void validate_model_config(const ModelConfig& c) {
  check_one_of("arch", c.arch, {"decoder", "encoder", "encoder-decoder"});
  check_one_of("positions", c.positions, {"learned", "sinusoidal", "rotary", "axial", "relative"});
  check_one_of("activation", c.activation, {"gelu", "gelu_tanh", "relu"});
  check_one_of("block", c.block, {"plain", "recompute", "reversible"});
  check_one_of("pooling", c.pooling, {"mean", "pma"});
  EF_CHECK(c.pooling == "mean" || c.arch == "encoder", ValueError, "model config: pooling = '", c.pooling,
           "'; pooling is the classifier's, for arch 'encoder' only (arch is '", c.arch, "')");
  EF_CHECK(c.block != "reversible" || c.pre_ln, ValueError,
           "model config: block = 'reversible' needs pre_ln = true (a post-LN block normalizes after the "
           "residual, which cannot be inverted)");
  // Upper bounds far above any model this engine can train, so that sizes from a config or a
  // checkpoint never overflow the products that size tensors (the memory estimate judges the rest).
  auto in_range = [](const char* key, int64_t v, int64_t max) {
    EF_CHECK(v >= 1 && v <= max, ValueError, "model config: ", key, " = ", v, "; expected >= 1 and at most ", max);
  };
  in_range("vocab_size", c.vocab_size, int64_t(1) << 24);
  in_range("d_model", c.d_model, int64_t(1) << 20);
  in_range("n_heads", c.n_heads, int64_t(1) << 20);
  in_range("n_layers", c.n_layers, int64_t(1) << 16);
  in_range("d_ff", c.d_ff, int64_t(1) << 24);
  in_range("max_len", c.max_len, int64_t(1) << 24);
  in_range("ffn_chunks", c.ffn_chunks, int64_t(1) << 24);
  EF_CHECK(c.n_encoder_layers <= (int64_t(1) << 16) && c.num_classes <= (int64_t(1) << 24), ValueError,
           "model config: n_encoder_layers = ", c.n_encoder_layers, ", num_classes = ", c.num_classes,
           "; expected at most 65536 and 16777216");
  EF_CHECK(c.d_model % c.n_heads == 0, ValueError, "model config: d_model = ", c.d_model,
           " is not divisible by n_heads = ", c.n_heads);
  EF_CHECK(c.positions != "rotary" || (c.d_model / c.n_heads) % 2 == 0, ValueError,
           "model config: positions = 'rotary' needs an even head dim; d_model / n_heads = ",
           c.d_model / c.n_heads);
  EF_CHECK(c.positions == "axial" || (c.axial_shape.empty() && c.axial_dims.empty()), ValueError,
           "model config: axial_shape and axial_dims are for positions = 'axial' (positions is '", c.positions,
           "')");
  if (c.positions == "axial") {
    const AxialLayout a = axial_layout(c);
    EF_CHECK(a.shape[0] >= 1 && a.shape[1] >= 1 && a.shape[0] <= c.max_len && a.shape[1] <= c.max_len &&
                 a.shape[0] * a.shape[1] >= c.max_len,
             ValueError, "model config: axial_shape = [", a.shape[0], ", ", a.shape[1],
             "]; expected two positive integers, each <= max_len, whose product covers max_len = ", c.max_len);
    EF_CHECK(a.dims[0] >= 1 && a.dims[1] >= 1 && a.dims[0] + a.dims[1] == c.d_model, ValueError,
             "model config: axial_dims = [", a.dims[0], ", ", a.dims[1],
             "]; expected two positive widths that sum to d_model = ", c.d_model);
  }
  EF_CHECK(c.dropout >= 0.0f && c.dropout < 1.0f, ValueError, "model config: dropout = ", c.dropout,
           "; expected a value in [0, 1)");
  EF_CHECK(c.attention_dropout >= 0.0f && c.attention_dropout < 1.0f, ValueError,
           "model config: attention_dropout = ", c.attention_dropout, "; expected a value in [0, 1)");
  if (c.arch == "encoder-decoder") {
    EF_CHECK(c.n_encoder_layers >= 1, ValueError, "model config: n_encoder_layers = ", c.n_encoder_layers,
             "; expected >= 1 for arch 'encoder-decoder'");
  } else {
    EF_CHECK(c.n_encoder_layers == 0, ValueError, "model config: n_encoder_layers = ", c.n_encoder_layers,
             "; expected 0 (it is for arch 'encoder-decoder' only; arch is '", c.arch, "')");
  }
  if (c.arch == "encoder") {
    EF_CHECK(c.num_classes >= 1, ValueError, "model config: num_classes = ", c.num_classes,
             "; expected >= 1 for arch 'encoder'");
  } else {
    EF_CHECK(c.num_classes == 0, ValueError, "model config: num_classes = ", c.num_classes,
             "; expected 0 (it is for arch 'encoder' only; arch is '", c.arch, "')");
  }
  EF_CHECK(c.layer_attention.empty() || int64_t(c.layer_attention.size()) == c.n_layers, ValueError,
           "model config: layer_attention has ", c.layer_attention.size(),
           " entries; expected 0 or n_layers = ", c.n_layers);
  check_one_of("attention.kind", c.attention.kind, attention::mechanism_names());
  check_one_of("cross_attention.kind", c.cross_attention.kind, attention::mechanism_names());
  for (size_t i = 0; i < c.layer_attention.size(); ++i)
    check_one_of(detail::concat("layer_attention[", i, "].kind"), c.layer_attention[i].kind,
                 attention::mechanism_names());
  validate_memory(c);
}

namespace {
json memory_json(const MemoryConfig& m) {
  if (m.kind == "none") return json{{"kind", "none"}};
  json j{{"kind", m.kind}, {"mem_len", m.mem_len}};
  if (m.kind == "compressive") {
    j["cmem_len"] = m.cmem_len;
    j["compression_rate"] = m.compression_rate;
    j["compression"] = m.compression;
  }
  return j;
}
}  // namespace

json to_json(const ModelConfig& c) {
  json layers = json::array();
  for (const auto& a : c.layer_attention) layers.push_back(attention_json(a));
  return json{{"arch", c.arch},
              {"vocab_size", c.vocab_size},
              {"d_model", c.d_model},
              {"n_heads", c.n_heads},
              {"n_layers", c.n_layers},
              {"n_encoder_layers", c.n_encoder_layers},
              {"d_ff", c.d_ff},
              {"max_len", c.max_len},
              {"dropout", tidy(c.dropout)},
              {"pre_ln", c.pre_ln},
              {"positions", c.positions},
              {"tie_weights", c.tie_weights},
              {"num_classes", c.num_classes},
              {"ffn_chunks", c.ffn_chunks},
              {"activation", c.activation},
              {"attention", attention_json(c.attention)},
              {"layer_attention", layers},
              {"cross_attention", attention_json(c.cross_attention)},
              {"attention_dropout", tidy(c.attention_dropout)},
              {"block", c.block},
              {"pooling", c.pooling},
              {"axial_shape", c.axial_shape},
              {"axial_dims", c.axial_dims},
              {"memory", memory_json(c.memory)}};
}

AxialLayout axial_layout(const ModelConfig& c) {
  AxialLayout a{};
  if (c.axial_shape.size() == 2) {
    a.shape = {c.axial_shape[0], c.axial_shape[1]};
  } else {
    int64_t n2 = 1;
    while (n2 * n2 < c.max_len) n2 *= 2;  // the smallest power of two with n2^2 >= max_len
    a.shape = {(c.max_len + n2 - 1) / n2, n2};
  }
  a.dims = c.axial_dims.size() == 2 ? std::array<int64_t, 2>{c.axial_dims[0], c.axial_dims[1]}
                                    : std::array<int64_t, 2>{c.d_model / 2, c.d_model - c.d_model / 2};
  return a;
}

const AttentionChoice& attention_for_layer(const ModelConfig& c, int64_t layer) {
  EF_CHECK(layer >= 0 && layer < c.n_layers, IndexError, "attention_for_layer: layer ", layer,
           " is outside [0, n_layers = ", c.n_layers, ")");
  return c.layer_attention.empty() ? c.attention : c.layer_attention[size_t(layer)];
}

}  // namespace eformer::models
