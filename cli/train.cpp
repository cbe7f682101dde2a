// `eformer train`: trains a causal language model from a preset or run file, resumes a
// checkpointed run exactly, or starts a new run from a checkpoint's weights (--init: weight
// transfer, e.g. a trained softmax Transformer fine-tuned with Performer attention). Writes
// <out>/checkpoint.safetensors and <out>/log.jsonl.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common.h"
#include "mechanisms.h"
#include "stop_signals.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"
#include "eformer/train/memory.h"
#include "eformer/train/trainer.h"

namespace eformer::cli {
namespace {

constexpr const char* kHelp =
    R"(usage: eformer train (--preset NAME | --config FILE | --resume CKPT | --init CKPT) [options]

Trains a byte-level causal language model and writes OUT/checkpoint.safetensors (weights, optimizer
and RNG state: resumable exactly) and OUT/log.jsonl (one JSON object per line: training losses,
validation bits per character). Progress goes to stderr; Ctrl-C or SIGTERM stops after the current
step and writes the checkpoint (exit code 130 or 143); a second one ends the process at once.

  --preset NAME        a preset from presets/ (tiny, small, reformer, xl) or a path to a run file.
                       A model with a memory (model.memory, e.g. preset xl) trains on contiguous
                       segments, batch_size lanes read in order, its memory carried and checkpointed
  --config FILE        a run file: {"model": {...}, "train": {...}}
  --resume CKPT        continue the run in CKPT exactly where it stopped (its model and train
                       config; --steps/--minutes/--set train.KEY may change the run's length or
                       settings, which changes the losses from there on)
  --init CKPT          a new run (step 0, fresh optimizer) of CKPT's model, initialised from its
                       weights; --set model.KEY changes the model (e.g. model.attention.kind=
                       performer): every weight of CKPT must fit it (same names and shapes), and
                       buffers CKPT lacks (Performer's random features) are freshly drawn and
                       named on stderr. The train settings are CKPT's, or those of --preset/
                       --config when given (their model is not used). Not with --resume
  --data PATH          corpus file or folder (default: the run's, else data/kjv.txt); the name
                       fashion-mnist selects the Fashion-MNIST images for pixel-by-pixel
                       generation (784 grey levels per image after a start token; the model's
                       context must be 784, e.g. --set model.max_len=784), reported in bits per
                       dimension; `eformer generate --png` draws an image from such a model
  --steps N            train for N optimizer steps
  --minutes M          train for M minutes: the step count is fitted to the time (the cosine
                       schedule spans it); with --steps as well, whichever comes first
  --out DIR            output folder (default: out/<preset or config name>; with --resume, the
                       checkpoint's folder, refused when its checkpoint.safetensors or log.jsonl
                       belongs to another run; with --init, that folder's name + "-init")
  --seed S             seed of the initialisation, dropout and batch order (default: the config's)
  --threads T          worker threads (default: all cores)
  --set KEY=VALUE      override a config key (repeatable): lr=3e-3, model.dropout=0,
                       train.batch_size=8, model.attention.kind=full
  --log-every K        a training line in the log every K steps (train.log_every)
  --eval-every K       a validation estimate every K steps (train.eval_every)
  --checkpoint-every K a checkpoint every K steps (train.checkpoint_every)
  --quiet              no progress line
  --no-memory-check    train even when the memory estimate (printed at the start) exceeds the
                       memory available
)";

std::string stem_of(const std::string& path) { return std::filesystem::path(path).stem().string(); }

// The default output folder of --init CKPT: CKPT's folder with "-init" appended (out/tiny ->
// out/tiny-init), or out/init for a checkpoint in the current folder.
std::string init_out_dir(const std::string& init) {
  std::filesystem::path folder = std::filesystem::path(init).parent_path();
  if (folder.empty() || folder == "." || folder.filename().empty()) return "out/init";
  return folder.string() + "-init";
}

// --resume writes OUT/checkpoint.safetensors and OUT/log.jsonl. Unless the checkpoint there is
// the one resumed (the usual case: the run continues in its own folder), those files belong to
// another run: ValueError rather than overwriting them (as --init refuses to overwrite its source).
void refuse_other_runs_files(const std::string& resume, const std::string& checkpoint_path,
                             const std::string& log_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::equivalent(resume, checkpoint_path, ec) && !ec) return;
  for (const std::string& path : {checkpoint_path, log_path})
    EF_CHECK(!fs::exists(path, ec), ValueError, "train: --resume '", resume, "' would overwrite '", path,
             "', which belongs to another run; give --out DIR (a new folder) or resume '", checkpoint_path,
             "' itself");
}

}  // namespace

int run_train(int argc, char** argv) {
  const char* cmd = "train";
  StopOnSignals stop_on_signals;  // first, before any worker thread exists
  std::string preset, config_file, resume, init, data_path, out, steps, minutes, seed;
  std::vector<std::string> sets;
  bool quiet = false, data_given = false, memory_check = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::fputs(("\n" + mechanism_listing()).c_str(), stdout);
      return 0;
    }
    if (a == "--quiet") {
      quiet = true;
      continue;
    }
    if (a == "--no-memory-check") {
      memory_check = false;
      continue;
    }
    if (a.size() < 3 || a.rfind("--", 0) != 0)
      throw ValueError("train: unexpected argument '" + a + "'; see eformer train --help");
    std::string v = flag_value(cmd, argc, argv, i);
    if (a == "--preset") preset = v;
    else if (a == "--config") config_file = v;
    else if (a == "--resume") resume = v;
    else if (a == "--init") init = v;
    else if (a == "--data") data_path = v, data_given = true;
    else if (a == "--steps") steps = v;
    else if (a == "--minutes") minutes = v;
    else if (a == "--out") out = v;
    else if (a == "--seed") seed = v;
    else if (a == "--threads") set_threads(cmd, v);
    else if (a == "--set") sets.push_back(v);
    else if (a == "--log-every") sets.push_back("train.log_every=" + std::to_string(parse_int(cmd, a, v)));
    else if (a == "--eval-every") sets.push_back("train.eval_every=" + std::to_string(parse_int(cmd, a, v)));
    else if (a == "--checkpoint-every")
      sets.push_back("train.checkpoint_every=" + std::to_string(parse_int(cmd, a, v)));
    else throw ValueError("train: unknown option '" + a + "'; see eformer train --help");
  }
  EF_CHECK(init.empty() || resume.empty(), ValueError,
           "train: --init and --resume exclude each other (--resume continues a run, --init starts a new "
           "one from a checkpoint's weights)");
  int sources = int(!preset.empty()) + int(!config_file.empty()) + int(!resume.empty());
  EF_CHECK(sources == 1 || (sources == 0 && !init.empty()), ValueError,
           "train: give exactly one of --preset, --config or --resume (or --init alone)",
           sources > 1 ? " (got several)" : "");

  nlohmann::json run;
  std::string default_out;
  train::Checkpoint checkpoint;
  if (!resume.empty()) {
    EF_CHECK(seed.empty(), ValueError, "train: --seed cannot be combined with --resume (the checkpoint's seed "
                                       "fixes the batch order)");
    checkpoint = train::read_checkpoint(resume);
    run = {{"model", models::to_json(checkpoint.model_config)}, {"train", checkpoint.info.train_config}};
    default_out = std::filesystem::path(resume).parent_path().string();
    if (default_out.empty()) default_out = ".";
  } else if (sources == 0) {  // --init alone: the checkpoint's run, as a new one
    checkpoint = train::read_checkpoint(init);
    run = {{"model", models::to_json(checkpoint.model_config)}, {"train", checkpoint.info.train_config}};
  } else {
    std::string path = preset.empty() ? config_file : train::preset_path(preset);
    run = train::read_run_json(path);
    EF_CHECK(run.is_object(), ValueError, "train: config '", path,
             "' must be a JSON object {\"model\": {...}, \"train\": {...}}");
    default_out = "out/" + stem_of(path);
    if (!init.empty()) {  // the train settings of the file, the model of the checkpoint
      checkpoint = train::read_checkpoint(init);
      run["model"] = models::to_json(checkpoint.model_config);
    }
  }
  if (!init.empty()) default_out = init_out_dir(init);
  const nlohmann::json model_before = run.value("model", nlohmann::json::object());
  for (const auto& s : sets) train::apply_override(run, s);
  if (!resume.empty())
    EF_CHECK(run.value("model", nlohmann::json::object()) == model_before, ValueError,
             "train: --set cannot change the model of a resumed run (only train.* keys)");
  nlohmann::json& tj = run["train"];
  if (tj.is_null()) tj = nlohmann::json::object();
  EF_CHECK(tj.is_object(), ValueError, "train: \"train\" must be a JSON object, got ", tj.dump());
  if (!steps.empty()) {
    int64_t n = parse_int(cmd, "--steps", steps);
    EF_CHECK(n >= 1, ValueError, "train: --steps must be at least 1, got ", n);
    tj["steps"] = n;
    if (minutes.empty()) tj["time_budget_s"] = 0.0;
  }
  if (!minutes.empty()) {
    double m = parse_double(cmd, "--minutes", minutes);
    EF_CHECK(m > 0, ValueError, "train: --minutes must be positive, got ", minutes);
    tj["time_budget_s"] = m * 60.0;
    if (steps.empty()) tj["steps"] = 0;
  }
  if (!seed.empty()) tj["seed"] = parse_uint(cmd, "--seed", seed);
  if (data_given) tj["data"] = data_path;
  if (out.empty()) out = default_out;
  tj["checkpoint_path"] = (std::filesystem::path(out) / "checkpoint.safetensors").string();
  tj["log_path"] = (std::filesystem::path(out) / "log.jsonl").string();
  if (!resume.empty()) refuse_other_runs_files(resume, tj["checkpoint_path"], tj["log_path"]);
  if (!init.empty()) {
    std::error_code ec;  // an error here means the output checkpoint does not exist yet
    EF_CHECK(!std::filesystem::equivalent(init, tj["checkpoint_path"].get<std::string>(), ec) || ec, ValueError,
             "train: --out '", out, "' would overwrite the --init checkpoint '", init, "'; choose another --out");
  }

  train::RunConfig rc = train::parse_run_config(run);
  EF_CHECK(rc.train.steps > 0 || rc.train.time_budget_s > 0, ValueError,
           "train: no run length: give --steps N or --minutes M (or set train.steps in the config)");
  // Under mpirun each rank trains on its share of the batch (train/distributed.h).
  const train::World& world = train::World::get();
  const int64_t rank_batch = std::max<int64_t>(1, rc.train.batch_size / world.size());
  const train::MemoryEstimate memory = train::estimate_memory(rc.model, rank_batch, /*training=*/true);
  if (memory_check) train::check_memory(memory, "train", "pass --no-memory-check to try anyway");
  data::Corpus corpus = load_corpus(rc.train.data);

  std::unique_ptr<train::Trainer> trainer;
  if (!resume.empty()) trainer = std::make_unique<train::Trainer>(checkpoint, rc.train, corpus);
  else trainer = std::make_unique<train::Trainer>(rc.model, rc.train, corpus);
  if (!init.empty()) {
    // A fresh run (seeded initialisation, new AdamW), then the weights copied in place: the
    // optimizer holds the same tensors. Buffers the checkpoint lacks keep the seeded draw.
    print_fresh_buffers(train::transfer_state(checkpoint.model_state, trainer->model(), init));
  }
  const int64_t init_step = checkpoint.info.step;
  checkpoint = {};  // the weights are in the model now
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  EF_CHECK(!ec, IOError, "train: cannot create the output folder '", out, "': ", ec.message());
  if (!quiet && world.rank() == 0) trainer->set_progress(stderr);

  const auto& mc = trainer->model().config();
  const std::string ranks =
      world.parallel() ? "; " + std::to_string(world.size()) + " ranks (" + train::World::library() + ")" : "";
  if (world.rank() == 0)
    std::fprintf(stderr,
               "eformer train: %s%lld layers, d_model %lld, %lld heads, %s, %lld parameters; "
               "batch %lld, lr %g, %s; data %s (%lld train tokens); %d threads%s; memory estimate %s%s; "
               "out %s\n",
               !resume.empty() ? ("resuming " + resume + " at step " + std::to_string(trainer->step()) + "; ").c_str()
               : !init.empty() ? ("initialised from " + init + " (step " + std::to_string(init_step) + "); ").c_str()
                               : "",
               (long long)mc.n_layers, (long long)mc.d_model, (long long)mc.n_heads,
               (mc.memory.kind == "none" ? "context " + std::to_string(mc.max_len)
                                         : "segments of " + std::to_string(mc.max_len) + " with a " + mc.memory.kind +
                                               " memory of " + std::to_string(mc.memory.mem_len))
                   .c_str(),
               (long long)trainer->model().num_parameters(), (long long)rc.train.batch_size, rc.train.lr,
               rc.train.steps > 0
                   ? (std::to_string(rc.train.steps) + " steps" +
                      (rc.train.time_budget_s > 0 ? " or " + std::to_string(rc.train.time_budget_s / 60) + " min" : ""))
                         .c_str()
                   : (std::to_string(rc.train.time_budget_s / 60.0).substr(0, 5) + " minutes").c_str(),
               corpus.source().c_str(), (long long)corpus.split_size(data::Split::Train), parallel::num_threads(),
               ranks.c_str(), train::bytes_str(memory.total_bytes()).c_str(), world.parallel() ? " per rank" : "",
               out.c_str());
  train::TrainResult r = trainer->run();  // a signal since the start stops it (stop_signals.h)

  const int code = r.reason != "interrupted" ? 0 : 128 + (stop_on_signals.received() ? stop_on_signals.received() : SIGINT);
  if (world.rank() != 0) return code;
  std::printf("trained %lld steps (%s) in %.1f min at %.0f tokens/s; valid bits/%s %.4f (estimate)\n",
              (long long)r.steps, r.reason.c_str(), r.elapsed_s / 60.0, r.tokens_per_s, corpus.unit().c_str(),
              r.valid_bits_per_char);
  std::printf("checkpoint: %s\nlog: %s\n", rc.train.checkpoint_path.c_str(), rc.train.log_path.c_str());
  return code;
}

}  // namespace eformer::cli
