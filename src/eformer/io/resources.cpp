#include "eformer/io/resources.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

namespace eformer::io {
namespace {

namespace fs = std::filesystem;

// share/eformer under the binary's folder and up to four of its parents, nearest first.
std::vector<fs::path> candidates() {
  std::vector<fs::path> out;
  const std::string dir = binary_dir();
  if (dir.empty()) return out;
  fs::path p = dir;
  for (int up = 0; up <= 4; ++up) {
    out.push_back(p / "share" / "eformer");
    if (!p.has_parent_path() || p.parent_path() == p) break;
    p = p.parent_path();
  }
  return out;
}

}  // namespace

std::string binary_dir() {
  Dl_info info{};
  std::error_code ec;
  if (dladdr(reinterpret_cast<void*>(&binary_dir), &info) != 0 && info.dli_fname != nullptr &&
      fs::path(info.dli_fname).is_absolute()) {
    fs::path p = fs::canonical(info.dli_fname, ec);
    if (!ec) return p.parent_path().string();
  }
  // The main executable (dladdr names it as it was invoked, maybe relative).
  fs::path exe = fs::canonical("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

std::string resource_dir() {
  if (const char* home = std::getenv("EFORMER_HOME"); home != nullptr && *home != '\0') return home;
  std::error_code ec;
  for (const fs::path& c : candidates())
    if (fs::is_directory(c, ec)) return c.string();
  return "";
}

std::string find_resource(const std::string& relative) {
  const std::string dir = resource_dir();
  if (dir.empty()) return "";
  std::error_code ec;
  fs::path p = fs::path(dir) / relative;
  return fs::exists(p, ec) ? p.string() : "";
}

std::string resource_search_description() {
  const char* home = std::getenv("EFORMER_HOME");
  std::string out = home && *home ? std::string("$EFORMER_HOME = ") + home : "$EFORMER_HOME (unset)";
  if (home && *home) return out;
  for (const fs::path& c : candidates()) out += ", " + c.string();
  return out;
}

}  // namespace eformer::io
