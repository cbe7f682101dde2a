// `eformer info`: what a checkpoint holds: model config, parameter count, mechanism per layer,
// training progress.
#include <algorithm>
#include <cstdio>
#include <string>

#include "common.h"
#include "eformer/train/memory.h"
#include "mechanisms.h"
#include "eformer/train/checkpoint.h"

namespace eformer::cli {
namespace {

constexpr const char* kHelp = R"(usage: eformer info CKPT [--json]
       eformer info [--mechanisms] [--json | --markdown]

With CKPT: prints a checkpoint's model (architecture, sizes, parameter count, attention mechanism of
each layer) and training state (step, elapsed time, training config). The weights are loaded and
checked against the config.
Without CKPT (or with --mechanisms): lists the registered attention mechanisms, what each supports
(causal, bidirectional, cross, padding mask, native streaming) and its options.

  --json        print one JSON object (or, for the mechanisms, a JSON array)
  --markdown    the mechanisms as the table of docs/MECHANISMS.md
)";

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string mechanism_str(const models::AttentionChoice& a) {
  return a.options.empty() ? a.kind : a.kind + " " + a.options.dump();
}

}  // namespace

int run_info(int argc, char** argv) {
  std::string ckpt;
  bool json = false, markdown = false, list = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") json = true;
    else if (a == "--markdown") markdown = true;
    else if (a == "--mechanisms") list = true;
    else if (a.rfind("--", 0) == 0) throw ValueError("info: unknown option '" + a + "'; see eformer info --help");
    else {
      EF_CHECK(ckpt.empty(), ValueError, "info: unexpected argument '", a, "' (one checkpoint only)");
      ckpt = a;
    }
  }
  if (ckpt.empty() || list) {
    EF_CHECK(ckpt.empty(), ValueError, "info: --mechanisms takes no checkpoint");
    EF_CHECK(!(json && markdown), ValueError, "info: --json and --markdown exclude each other");
    if (json) std::printf("%s\n", mechanism_json().dump().c_str());
    else std::fputs((markdown ? mechanism_markdown() : mechanism_listing()).c_str(), stdout);
    if (!json && !markdown) {
      const std::string mpi = train::World::library();
      std::printf("\ndata-parallel training: %s\n",
                  mpi == "none" ? "not in this build (no MPI found when it was configured)"
                                : (mpi + " (mpirun -np R eformer train ...; this process: rank " +
                                   std::to_string(train::World::get().rank()) + " of " +
                                   std::to_string(train::World::get().size()) + ")")
                                      .c_str());
    }
    return 0;
  }
  EF_CHECK(!markdown, ValueError, "info: --markdown is for the mechanism listing (eformer info --mechanisms --markdown)");
  train::Checkpoint c = train::read_checkpoint(ckpt);
  auto model = train::load_model(c);
  const models::ModelConfig& m = c.model_config;
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const auto& a = models::attention_for_layer(m, i);
    layers.push_back({{"kind", a.kind}, {"options", a.options}});
  }
  const nlohmann::json& t = c.info.train_config;
  const int64_t batch = std::clamp<int64_t>(t.value("batch_size", int64_t(16)), 1, int64_t(1) << 20);
  const train::MemoryEstimate training = train::estimate_memory(m, batch, true);
  const train::MemoryEstimate evaluation = train::estimate_memory(m, 16, false);  // eval's default batch
  if (json) {
    nlohmann::json j{{"checkpoint", ckpt},
                     {"format_version", train::kCheckpointVersion},
                     {"model", models::to_json(m)},
                     {"parameters", model->num_parameters()},
                     {"layers", layers},
                     {"memory", models::to_json(m)["memory"]},
                     {"training_memory_saved", !c.memory_state.empty()},
                     {"step", c.info.step},
                     {"elapsed_s", c.info.elapsed_s},
                     {"rng", {{"seed", c.info.rng.seed}, {"stream", c.info.rng.stream}, {"counter", c.info.rng.counter}}},
                     {"train", t},
                     {"memory_estimate", {{"training_bytes", training.total_bytes()}, {"training_batch", batch},
                                          {"evaluation_bytes", evaluation.total_bytes()}, {"evaluation_batch", 16}}}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("checkpoint  %s (eformer checkpoint, format %d)\n", ckpt.c_str(), train::kCheckpointVersion);
  std::printf("model       %s: %lld layers, d_model %lld, %lld heads, d_ff %lld, context %lld, vocab %lld\n",
              m.arch.c_str(), (long long)m.n_layers, (long long)m.d_model, (long long)m.n_heads, (long long)m.d_ff,
              (long long)m.max_len, (long long)m.vocab_size);
  std::printf("            %s positions, %s, dropout %g, %s, %s, ffn_chunks %lld, %s blocks\n",
              m.positions.c_str(), m.pre_ln ? "pre-LN" : "post-LN", double(m.dropout), m.activation.c_str(),
              m.tie_weights ? "tied embedding" : "untied head", (long long)m.ffn_chunks, m.block.c_str());
  std::printf("parameters  %s\n", with_commas(model->num_parameters()).c_str());
  std::printf("memory      training about %s at batch %lld; evaluation about %s at batch 16\n",
              training.describe().c_str(), (long long)batch, train::bytes_str(evaluation.total_bytes()).c_str());
  if (m.memory.kind != "none") {
    std::printf("attention   layers 0-%lld: %s relative attention, segment %lld, memory %lld%s (%s)\n",
                (long long)m.n_layers - 1, m.memory.kind.c_str(), (long long)m.max_len, (long long)m.memory.mem_len,
                m.memory.kind == "compressive"
                    ? (", compressed memory " + std::to_string(m.memory.cmem_len) + " at rate " +
                       std::to_string(m.memory.compression_rate) + " by " + m.memory.compression)
                          .c_str()
                    : "",
                c.memory_state.empty() ? "no training memory saved"
                                       : ("training memory of " + std::to_string(c.memory_state.begin()->second.size(1)) +
                                          " states per layer saved")
                                             .c_str());
  } else {
    for (int64_t i = 0; i < m.n_layers; ++i)
      std::printf("%s %lld: %s\n", i == 0 ? "attention   layer" : "            layer", (long long)i,
                  mechanism_str(models::attention_for_layer(m, i)).c_str());
  }
  int64_t steps = t.value("steps", int64_t(0));
  std::printf("training    step %lld%s, %.1f min, seed %llu, batch %lld, lr %g\n", (long long)c.info.step,
              steps > 0 ? (" of " + std::to_string(steps)).c_str() : "", c.info.elapsed_s / 60.0,
              (unsigned long long)t.value("seed", uint64_t(0)), (long long)t.value("batch_size", int64_t(0)),
              t.value("lr", 0.0));
  std::printf("train       %s\n", t.dump().c_str());
  return 0;
}

}  // namespace eformer::cli
