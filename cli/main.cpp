// The eformer command line. Subcommands (train, eval, generate, info, bench) arrive with the
// model issues; for now: --help and --version.
#include <cstring>
#include <iostream>
#include <string>

#include "demo.h"
#include "eformer/eformer.h"

namespace {
constexpr const char* kUsage = R"(usage: eformer <command> [options]

commands:
  demo        train a small MLP from C++ (the engine end to end); eformer demo --help
  (arriving with the model layer: train, eval, generate, info)
options:
  --help      show this message
  --version   print the version
)";
}

int main(int argc, char** argv) {
  try {
    if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
      std::cout << kUsage;
      return argc < 2 ? 2 : 0;
    }
    if (std::strcmp(argv[1], "--version") == 0) {
      std::cout << "eformer " << eformer::kVersion << "\n";
      return 0;
    }
    if (std::strcmp(argv[1], "demo") == 0) return eformer::cli::run_demo(argc - 1, argv + 1);
    throw eformer::ValueError(std::string("unknown command or option '") + argv[1] + "'; see eformer --help");
  } catch (const eformer::Error& e) {
    std::cerr << "eformer: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "eformer: internal error: " << e.what() << "\n";
    return 1;
  }
}
