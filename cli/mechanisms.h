// Listings of the registered attention mechanisms (cli/mechanisms.cpp).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace eformer::cli {

std::string mechanism_listing();   // plain text: name, description, capabilities, options
std::string mechanism_markdown();  // the table of docs/MECHANISMS.md
nlohmann::json mechanism_json();   // every entry as JSON

}  // namespace eformer::cli
