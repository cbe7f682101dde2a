// Shared helpers of the CLI's subcommands: flag values, numbers parsed strictly, the corpus and
// thread options. Every problem is an eformer::Error, which run() prints as
// "eformer: error: ..." with exit code 2.
#pragma once
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "eformer/eformer.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"

namespace eformer::cli {

// The whole command line (cli/cli.cpp): argv[0] is the program, argv[1] the command. Returns the
// exit code: 0, 2 for any eformer::Error (one line on stderr), 1 for an internal error.
int run(int argc, char** argv);

// The value after flag argv[i] (advancing i); ValueError naming the command and flag when missing.
inline std::string flag_value(const char* command, int argc, char** argv, int& i) {
  EF_CHECK(i + 1 < argc, ValueError, command, ": ", argv[i], " needs a value");
  EF_CHECK(argv[i + 1][0] != '\0', ValueError, command, ": ", argv[i], " needs a value, got ''");
  return argv[++i];
}

inline int64_t parse_int(const char* command, const std::string& flag, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(value.c_str(), &end, 10);
  EF_CHECK(!value.empty() && end && *end == '\0' && errno == 0, ValueError, command, ": ", flag,
           " expects an integer, got '", value, "'");
  return v;
}

inline uint64_t parse_uint(const char* command, const std::string& flag, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  EF_CHECK(!value.empty() && value[0] != '-', ValueError, command, ": ", flag,
           " expects a non-negative integer, got '", value, "'");
  unsigned long long v = std::strtoull(value.c_str(), &end, 10);
  EF_CHECK(end && *end == '\0' && errno == 0, ValueError, command, ": ", flag,
           " expects a non-negative integer, got '", value, "'");
  return v;
}

inline double parse_double(const char* command, const std::string& flag, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(value.c_str(), &end);
  EF_CHECK(!value.empty() && end && *end == '\0' && errno == 0 && std::isfinite(v), ValueError, command, ": ",
           flag, " expects a number, got '", value, "'");
  return v;
}

inline void set_threads(const char* command, const std::string& value) {
  int64_t t = parse_int(command, "--threads", value);
  EF_CHECK(t >= 1 && t <= 4096, ValueError, command, ": --threads must be 1 to 4096, got ", t);
  parallel::set_num_threads(int(t));
}

// The corpus at `path`, the default corpus when empty, or the Fashion-MNIST images for generation
// (data/fashion_mnist.h) when it is "fashion-mnist".
inline data::Corpus load_corpus(const std::string& path) {
  if (path == data::kFashionMnistName) return data::fashion_mnist_corpus();
  return path.empty() ? data::Corpus::default_corpus() : data::Corpus::from_path(path);
}

// `base` with `--set` overrides (train::apply_override's syntax: "model.attention.kind=performer",
// "model.attention={...}", or a bare model key) applied; ValueError for a key outside model.* or a
// config that is not valid.
inline models::ModelConfig override_model(const char* command, const models::ModelConfig& base,
                                          const std::vector<std::string>& sets) {
  nlohmann::json run{{"model", models::to_json(base)}};
  for (const auto& s : sets) {
    train::apply_override(run, s);
    EF_CHECK(run.size() == 1, ValueError, command, ": --set accepts model.* keys only, got '", s, "'");
  }
  return models::parse_model_config(run["model"]);
}

// Prints the one-line notice of transfer_model / transfer_state (nothing when nothing was fresh).
inline void print_fresh_buffers(const std::vector<std::string>& fresh_buffers) {
  if (!fresh_buffers.empty()) std::fprintf(stderr, "%s\n", train::fresh_buffers_notice(fresh_buffers).c_str());
}

int run_train(int argc, char** argv);     // train.cpp
int run_eval(int argc, char** argv);      // eval.cpp
int run_generate(int argc, char** argv);  // generate.cpp
int run_info(int argc, char** argv);      // info.cpp

}  // namespace eformer::cli
