// The registered attention mechanisms as text, read from the registry (attention/registry.h):
// `eformer info` (no checkpoint), `eformer info --mechanisms [--json | --markdown]`, and the end of
// `eformer train --help`. The markdown table is the one in docs/MECHANISMS.md (a test keeps them equal).
#include "mechanisms.h"

#include "eformer/attention/registry.h"

namespace eformer::cli {

std::string mechanism_listing() {
  std::string out = "attention mechanisms (model.attention.kind; options in model.attention.options):\n";
  for (const auto& e : attention::mechanisms()) {
    out += detail::concat("  ", e.name, std::string(e.name.size() < 12 ? 12 - e.name.size() : 1, ' '),
                          e.description, "\n");
    out += "              supports: " + attention::describe(e.capabilities) + "\n";
    for (const auto& o : e.options)
      out += detail::concat("              ", o.name, " (", o.type, ", default ", o.default_value,
                            "): ", o.help, "\n");
  }
  return out;
}

std::string mechanism_markdown() {
  std::string out =
      "| name | what it is | causal | bidirectional | cross | padding | streaming | options |\n"
      "|---|---|---|---|---|---|---|---|\n";
  auto mark = [](bool b) { return b ? std::string("yes") : std::string("-"); };
  for (const auto& e : attention::mechanisms()) {
    std::string opts;
    for (const auto& o : e.options) opts += (opts.empty() ? "" : ", ") + ("`" + o.name + "`");
    const auto& c = e.capabilities;
    out += detail::concat("| `", e.name, "` | ", e.description, " | ", mark(c.causal), " | ",
                          mark(c.bidirectional), " | ", mark(c.cross), " | ", mark(c.padding_mask), " | ",
                          c.recurrent ? "native" : (c.causal ? "fallback" : "-"), " | ",
                          opts.empty() ? "-" : opts, " |\n");
  }
  return out;
}

nlohmann::json mechanism_json() {
  nlohmann::json all = nlohmann::json::array();
  for (const auto& e : attention::mechanisms()) {
    nlohmann::json opts = nlohmann::json::array();
    for (const auto& o : e.options)
      opts.push_back({{"name", o.name}, {"type", o.type}, {"default", o.default_value}, {"help", o.help}});
    nlohmann::json caps = nlohmann::json::object();
    for (const auto& [name, on] : attention::capability_flags(e.capabilities)) caps[name] = on;
    all.push_back({{"name", e.name},
                   {"description", e.description},
                   {"capabilities", caps},
                   {"reference", e.reference},
                   {"functional", bool(e.functional)},
                   {"pattern", bool(e.pattern)},
                   {"options", opts}});
  }
  return all;
}

}  // namespace eformer::cli
