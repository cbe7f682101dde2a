#include "eformer/attention/functional.h"

#include <utility>

#include "eformer/attention/mechanisms/performer.h"

namespace eformer::attention {
namespace {

using AttentionFn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&);

struct Kind {
  std::string name;
  AttentionFn fn;
  bool kernelized;  // takes AttentionOptions::feature_options and omega
};

// One line per mechanism.
const std::vector<Kind>& registry() {
  static const std::vector<Kind> kinds = {
      {"full", &full_attention, false},
      {"flash", &flash_attention, false},
      {"performer", &performer_attention, true},
      {"linear", &linear_attention, true},
  };
  return kinds;
}

}  // namespace

std::vector<std::string> attention_kinds() {
  std::vector<std::string> names;
  for (const auto& k : registry()) names.push_back(k.name);
  return names;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind,
                 const AttentionOptions& opts) {
  for (const auto& entry : registry()) {
    if (entry.name != kind) continue;
    EF_CHECK(entry.kernelized || (opts.feature_options.empty() && !opts.omega.defined()), ValueError,
             "attention: kind '", kind, "' takes no feature options or omega (those are for performer, linear)");
    return entry.fn(q, k, v, opts);
  }
  std::string valid;
  for (const auto& name : attention_kinds()) valid += (valid.empty() ? "" : ", ") + name;
  throw ValueError(detail::concat("attention: unknown kind '", kind, "'; valid kinds: ", valid));
}

}  // namespace eformer::attention
