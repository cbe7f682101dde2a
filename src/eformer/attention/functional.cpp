#include "eformer/attention/functional.h"

#include <utility>

namespace eformer::attention {
namespace {

using AttentionFn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&);

// One line per mechanism.
const std::vector<std::pair<std::string, AttentionFn>>& registry() {
  static const std::vector<std::pair<std::string, AttentionFn>> kinds = {
      {"full", &full_attention},
      {"flash", &flash_attention},
  };
  return kinds;
}

}  // namespace

std::vector<std::string> attention_kinds() {
  std::vector<std::string> names;
  for (const auto& [name, fn] : registry()) names.push_back(name);
  return names;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::string& kind,
                 const AttentionOptions& opts) {
  for (const auto& [name, fn] : registry())
    if (name == kind) return fn(q, k, v, opts);
  std::string valid;
  for (const auto& name : attention_kinds()) valid += (valid.empty() ? "" : ", ") + name;
  throw ValueError(detail::concat("attention: unknown kind '", kind, "'; valid kinds: ", valid));
}

}  // namespace eformer::attention
