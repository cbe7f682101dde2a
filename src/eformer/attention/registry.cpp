// The registry: one line per built-in mechanism (each entry is defined in its mechanism's file).
#include "eformer/attention/registry.h"

#include <algorithm>
#include <cmath>

#include "eformer/attention/mechanisms/aft.h"
#include "eformer/attention/mechanisms/axial.h"
#include "eformer/attention/mechanisms/etc.h"
#include "eformer/attention/mechanisms/exact.h"
#include "eformer/attention/mechanisms/isab.h"
#include "eformer/attention/mechanisms/linformer.h"
#include "eformer/attention/mechanisms/lsh.h"
#include "eformer/attention/mechanisms/memory_compressed.h"
#include "eformer/attention/mechanisms/performer.h"
#include "eformer/attention/mechanisms/routing.h"
#include "eformer/attention/mechanisms/sinkhorn.h"
#include "eformer/attention/mechanisms/sparse.h"
#include "eformer/attention/mechanisms/synthesizer.h"

namespace eformer::attention {
namespace {

std::vector<MechanismEntry>& entries() {
  static std::vector<MechanismEntry> all = {
      exact_entry("full"),           // materialized scores, the readable reference
      exact_entry("flash"),          // fused, tiled online softmax
      performer_entry("performer"),  // FAVOR+ random features
      performer_entry("linear"),     // elu + 1 features
      sparse_strided_entry(),        // Sparse Transformer, strided (block-sparse kernel)
      sparse_fixed_entry(),          // Sparse Transformer, fixed
      longformer_entry(),            // sliding window + global
      bigbird_entry(),               // window + global + random blocks
      local_entry(),                 // Image Transformer local 1-D blocks
      aft_entry("aft_full"),         // AFT: learned pairwise bias over max_len
      aft_entry("aft_simple"),       // AFT: no bias, O(N d)
      aft_entry("aft_local"),        // AFT: bias in a window, 0 outside
      aft_entry("aft_conv"),         // AFT: per-head kernel, depthwise conv + global sum
      lsh_entry(),                   // Reformer: shared-QK LSH buckets, sorted chunks
      routing_entry(),               // Routing Transformer: online k-means clusters, sorted chunks
      linformer_entry(),             // Linformer: keys and values projected along the length
      synthesizer_entry(),           // Synthesizer: learned / MLP-synthesized attention weights
      memory_compressed_entry(),     // strided-conv compressed keys and values plus local blocks
      sinkhorn_entry(),              // Sparse Sinkhorn: learned block sorting
      etc_entry(),                   // ETC: global tokens + local radius, relative bias
      isab_entry(),                  // Set Transformer: attention through m inducing points
      axial_entry(),                 // Axial Transformer: heads along rows and columns of an image
  };
  return all;
}

std::string join_names() {
  std::string valid;
  for (const auto& e : entries()) valid += (valid.empty() ? "" : ", ") + e.name;
  return valid;
}

}  // namespace

const std::vector<MechanismEntry>& mechanisms() { return entries(); }

std::vector<std::string> mechanism_names() {
  std::vector<std::string> names;
  for (const auto& e : entries()) names.push_back(e.name);
  return names;
}

const MechanismEntry& find_mechanism(const std::string& name) {
  for (const auto& e : entries())
    if (e.name == name) return e;
  throw ValueError(
      detail::concat("attention mechanism: unknown name '", name, "'; valid names: ", join_names()));
}

void register_mechanism(MechanismEntry entry) {
  EF_CHECK(!entry.name.empty() && !entry.description.empty() && !entry.reference.empty() && entry.make &&
               entry.check_options,
           ValueError, "register_mechanism: entry '", entry.name,
           "' is incomplete; it needs a name, a description, a reference, make and check_options");
  EF_CHECK(entry.reference != "softmax-pattern" || entry.pattern, ValueError, "register_mechanism: entry '",
           entry.name, "' declares the softmax-pattern reference but has no pattern");
  for (const auto& e : entries())
    EF_CHECK(e.name != entry.name, ValueError, "register_mechanism: '", entry.name,
             "' is already registered");
  entries().push_back(std::move(entry));
}

void unregister_mechanism(const std::string& name) {
  auto& all = entries();
  all.erase(std::remove_if(all.begin(), all.end(), [&](const auto& e) { return e.name == name; }), all.end());
}

std::shared_ptr<Mechanism> make_mechanism(const std::string& name, const MechanismConfig& config) {
  const MechanismEntry& e = find_mechanism(name);
  e.check_options(config.options);
  return e.make(config);
}

Tensor attention_pattern(const std::string& name, int64_t N, int64_t M, int64_t heads, bool causal,
                         const MechanismArgs& args, uint64_t seed) {
  const MechanismEntry& e = find_mechanism(name);
  EF_CHECK(e.pattern, ValueError, "attention_pattern: '", name,
           "' is not pattern-based (it has no fixed set of attended keys)");
  EF_CHECK(N >= 1 && M >= 1 && heads >= 1, ValueError, "attention_pattern: n = ", N, ", m = ", M,
           ", heads = ", heads, "; expected each >= 1");
  EF_CHECK(!causal || e.capabilities.causal, ValueError, "attention_pattern: '", name,
           "' has no causal form");
  EF_CHECK(causal || e.capabilities.bidirectional, ValueError, "attention_pattern: '", name,
           "' has no bidirectional form");
  return e.pattern(N, M, heads, causal, args, seed);
}

namespace options {

void unknown(const std::string& who, const std::string& key, const std::vector<OptionSpec>& specs) {
  std::string valid;
  for (const auto& s : specs) valid += (valid.empty() ? "" : ", ") + s.name;
  throw ValueError(detail::concat(who, ": unknown option '", key, "'; valid options: ",
                                  valid.empty() ? std::string("none (it takes no options)") : valid));
}

bool get_bool(const std::string& who, const std::string& key, const nlohmann::json& v) {
  EF_CHECK(v.is_boolean(), ValueError, who, ": option ", key, " = ", v.dump(), "; expected true or false");
  return v.get<bool>();
}

int64_t get_int(const std::string& who, const std::string& key, const nlohmann::json& v, int64_t min,
                int64_t max) {
  EF_CHECK(v.is_number_integer() && v.get<int64_t>() >= min && v.get<int64_t>() <= max, ValueError, who,
           ": option ", key, " = ", v.dump(), "; expected an integer >= ", min, " and <= ", max);
  return v.get<int64_t>();
}

double get_number(const std::string& who, const std::string& key, const nlohmann::json& v) {
  EF_CHECK(v.is_number() && std::isfinite(v.get<double>()), ValueError, who, ": option ", key, " = ",
           v.dump(), "; expected a finite number");
  return v.get<double>();
}

std::string get_string(const std::string& who, const std::string& key, const nlohmann::json& v,
                       const std::vector<std::string>& valid) {
  std::string list;
  for (const auto& s : valid) list += (list.empty() ? "" : " | ") + s;
  EF_CHECK(v.is_string() && std::find(valid.begin(), valid.end(), v.get<std::string>()) != valid.end(),
           ValueError, who, ": option ", key, " = ", v.dump(), "; expected one of ", list);
  return v.get<std::string>();
}

void check_tensors(const std::string& who, const MechanismArgs& args,
                   const std::vector<std::string>& allowed) {
  for (const auto& [key, t] : args.tensors) {
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string list;
    for (const auto& s : allowed) list += (list.empty() ? "" : ", ") + s;
    throw ValueError(detail::concat(who, ": unknown tensor argument '", key, "'; valid tensor arguments: ",
                                    list.empty() ? std::string("none") : list));
  }
}

}  // namespace options
}  // namespace eformer::attention
