// The mechanism registry: one entry per mechanism, everything the rest of the project asks of it.
// The CLI's listings, eformer.mechanisms() / attention_kinds() in Python, the model config's
// validation, the contract test suites (tests/attention/contract_test.cpp,
// tests/python/test_contract.py) and the benchmarks all read it; no kind list is written anywhere
// else. Adding a mechanism: its file under attention/mechanisms/ (which defines its entry) and one
// line in registry.cpp (docs/ARCHITECTURE.md, "Adding a mechanism").
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eformer/attention/mechanism.h"
#include "eformer/attention/options.h"

namespace eformer::attention {

// One option of a mechanism, for listings and docs: its name, type ("bool", "int", "number",
// "string", "tensor"), default and a one-line help.
struct OptionSpec {
  std::string name, type, default_value, help;
};

// A mechanism's own arguments beyond AttentionOptions, for the functional and pattern forms: JSON
// options (numbers, strings, bools; unknown keys are a ValueError listing the valid ones) and named
// tensors (e.g. Performer's omega, a learned bias).
struct MechanismArgs {
  nlohmann::json options = nlohmann::json::object();
  std::map<std::string, Tensor> tensors;
};

// q [B, H, N, d], k and v [B, H, M, d] -> [B, H, N, d].
using FunctionalForm = std::function<Tensor(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const AttentionOptions& opts, const MechanismArgs& args)>;
// The exact pattern: Bool [heads, N, M], true where query i may attend key j (before any key
// mask); a pure function of the sizes, causal, the options and the seed.
using PatternForm = std::function<Tensor(int64_t N, int64_t M, int64_t heads, bool causal,
                                         const MechanismArgs& args, uint64_t seed)>;
using Factory = std::function<std::shared_ptr<Mechanism>(const MechanismConfig&)>;

struct MechanismEntry {
  std::string name;         // "flash"
  std::string description;  // one line: what it is, the paper and equation
  Capabilities capabilities;
  // The float64 formulation the contract suites check it against: "softmax-pattern" (exact
  // softmax attention restricted to its pattern: needs `pattern`), "aft" (AFT eq. 2) or "kernelized" (normalized
  // feature-map attention, tests/python/references.py). A new formulation is added to the suites'
  // references; an entry whose reference they do not know fails them.
  std::string reference;
  std::vector<OptionSpec> options;  // the module's options (MechanismConfig::options)
  // Parses module options (JSON) and throws the ValueError of a bad one; nothing else.
  std::function<void(const nlohmann::json& options)> check_options;
  Factory make;
  FunctionalForm functional;  // empty: no functional form on explicit q, k, v
  PatternForm pattern;        // empty: not pattern-based
};

// Every entry, in registration order (built-ins first).
const std::vector<MechanismEntry>& mechanisms();
std::vector<std::string> mechanism_names();
// The entry of `name`; an unknown name is a ValueError listing the registered ones.
const MechanismEntry& find_mechanism(const std::string& name);
// Adds an entry (a mechanism defined outside the library); a duplicate or incomplete entry (no
// name, description, reference, make or check_options) is a ValueError. unregister_mechanism
// removes one (tests register throwaway mechanisms and remove them).
void register_mechanism(MechanismEntry entry);
void unregister_mechanism(const std::string& name);

// Builds a mechanism by name: checks its options, then its capabilities against the config.
std::shared_ptr<Mechanism> make_mechanism(const std::string& name, const MechanismConfig& config);

// The exact pattern of a pattern-based mechanism (ValueError for the others).
Tensor attention_pattern(const std::string& name, int64_t N, int64_t M, int64_t heads, bool causal,
                         const MechanismArgs& args = {}, uint64_t seed = 0);

// Helpers for entries: "option x = <value>; expected ..." parsing, shared by every mechanism.
namespace options {
// Throws the ValueError for an unknown key, listing `specs`' names. `who` is e.g. "attention 'lsh'".
[[noreturn]] void unknown(const std::string& who, const std::string& key,
                          const std::vector<OptionSpec>& specs);
bool get_bool(const std::string& who, const std::string& key, const nlohmann::json& v);
// Integers are sizes, counts or positions unless a caller says otherwise: at most kMaxOptionInt, so a
// hostile 2^62 is a message, never an overflow in the shape arithmetic (seeds and step counts pass a
// larger max).
inline constexpr int64_t kMaxOptionInt = int64_t(1) << 24;
int64_t get_int(const std::string& who, const std::string& key, const nlohmann::json& v, int64_t min,
                int64_t max = kMaxOptionInt);
double get_number(const std::string& who, const std::string& key, const nlohmann::json& v);
std::string get_string(const std::string& who, const std::string& key, const nlohmann::json& v,
                       const std::vector<std::string>& valid);
// Checks `args` has no tensors other than `allowed` (ValueError listing them).
void check_tensors(const std::string& who, const MechanismArgs& args,
                   const std::vector<std::string>& allowed);
}  // namespace options

}  // namespace eformer::attention
