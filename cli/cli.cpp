// The eformer command line: one subcommand per file (train.cpp, eval.cpp, generate.cpp, info.cpp,
// demo.cpp). Any eformer::Error is one line on stderr, "eformer: error: ...", and exit code 2.
// cli::run is the whole CLI; the `eformer` executable (cli/eformer.cpp) and `python -m eformer`
// (the Python module's _cli) both call it.
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#include "common.h"
#include "demo.h"
#include "eformer/eformer.h"

namespace {
constexpr const char* kUsage = R"(usage: eformer <command> [options]

commands:
  train       train a language model (presets: tiny, small), or resume a run exactly
  eval        bits per character of a checkpoint on a split of a corpus
  generate    stream text sampled from a checkpoint
  info        what a checkpoint holds (config, parameters, mechanism per layer); without
              one, the registered attention mechanisms and their options
  demo        train a small MLP from C++ (the engine end to end)

Each command takes --help.
options:
  --help      show this message
  --version   print the version
)";
}

namespace {
// Under mpirun, an error on one rank ends the whole job (the others would wait in a collective).
int failed(int code) {
  std::cerr.flush();
  eformer::train::World::abort_if_parallel(code);
  return code;
}
}  // namespace

int eformer::cli::run(int argc, char** argv) {
  try {
    if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
      std::cout << kUsage;
      return argc < 2 ? 2 : 0;
    }
    if (std::strcmp(argv[1], "--version") == 0) {
      std::cout << "eformer " << eformer::kVersion << "\n";
      return 0;
    }
    using namespace eformer::cli;
    std::string command = argv[1];
    if (command == "train") return run_train(argc - 1, argv + 1);
    if (command == "eval") return run_eval(argc - 1, argv + 1);
    if (command == "generate") return run_generate(argc - 1, argv + 1);
    if (command == "info") return run_info(argc - 1, argv + 1);
    if (command == "demo") return run_demo(argc - 1, argv + 1);
    throw eformer::ValueError(std::string("unknown command or option '") + argv[1] + "'; see eformer --help");
  } catch (const eformer::Error& e) {
    std::cerr << "eformer: error: " << e.what() << "\n";
    return failed(2);
  } catch (const nlohmann::json::exception& e) {  // a config of the wrong JSON shape
    std::cerr << "eformer: error: " << e.what() << "\n";
    return failed(2);
  } catch (const std::bad_alloc&) {  // an allocation outside the counting allocator (a std::vector)
    std::cerr << "eformer: error: out of memory; reduce the sizes (batch, context, model) or free memory\n";
    return failed(2);
  } catch (const std::exception& e) {
    std::cerr << "eformer: internal error: " << e.what() << "\n";
    return failed(1);
  }
}
