// The mechanism registry: one line per mechanism, name -> factory.
#include <utility>

#include "eformer/attention/mechanism.h"
#include "eformer/attention/mechanisms/exact.h"
#include "eformer/attention/mechanisms/performer.h"

namespace eformer::attention {
namespace {

using Factory = std::shared_ptr<Mechanism> (*)(const MechanismConfig&);

const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> entries = {
      {"full",
       [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {  // materialized scores
         return std::make_shared<MultiHeadAttention>("full", c);
       }},
      {"flash",
       [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {  // fused online softmax
         return std::make_shared<MultiHeadAttention>("flash", c);
       }},
      {"performer",
       [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {  // FAVOR+ random features
         return std::make_shared<PerformerAttention>("performer", c);
       }},
      {"linear",
       [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {  // elu + 1 features
         return std::make_shared<PerformerAttention>("linear", c);
       }},
  };
  return entries;
}

}  // namespace

std::vector<std::string> mechanism_names() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::shared_ptr<Mechanism> make_mechanism(const std::string& name, const MechanismConfig& config) {
  for (const auto& [n, factory] : registry())
    if (n == name) return factory(config);
  std::string valid;
  for (const auto& n : mechanism_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw ValueError(detail::concat("attention mechanism: unknown name '", name, "'; valid names: ", valid));
}

}  // namespace eformer::attention
