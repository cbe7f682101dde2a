#include "eformer/attention/functional.h"

namespace eformer::attention {

std::vector<std::string> attention_kinds() {
  std::vector<std::string> names;
  for (const auto& e : mechanisms())
    if (e.functional) names.push_back(e.name);
  return names;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind,
                 const AttentionOptions& opts, const MechanismArgs& args) {
  for (const auto& e : mechanisms()) {
    if (e.name != kind || !e.functional) continue;
    return e.functional(q, k, v, opts, args);
  }
  std::string valid;
  for (const auto& name : attention_kinds()) valid += (valid.empty() ? "" : ", ") + name;
  throw ValueError(detail::concat("attention: unknown kind '", kind, "'; valid kinds: ", valid));
}

}  // namespace eformer::attention
