// `eformer eval`: bits per character of a checkpoint's model on a split of a corpus.
#include <cstdio>
#include <string>
#include <vector>

#include "common.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/evaluate.h"

namespace eformer::cli {
namespace {

constexpr const char* kHelp = R"(usage: eformer eval CKPT [options]

Prints the model's bits per character (mean next-byte cross-entropy / ln 2) on a split of the
corpus, scored in non-overlapping windows of the model's context: every character but the split's
first is predicted exactly once.

With --set, the checkpoint's weights are evaluated in a model whose config is the checkpoint's
with overrides (weight transfer): every weight must fit the new model (same names and shapes);
buffers the checkpoint lacks (e.g. Performer's random features) are freshly drawn and named in a
notice on stderr.

  --data PATH         corpus file or folder (default: the one the checkpoint was trained on, else
                      data/kjv.txt); fashion-mnist: the Fashion-MNIST images, in bits per
                      dimension (every pixel of every image of the split predicted once)
  --split NAME        valid (default), test or train
  --max-batches N     score only N batches spread over the split (a quick estimate; default: all)
  --batch-size B      windows per batch (default 16)
  --context C         window length (default: the model's context); with a memory, the segment length
  --mem-len M         a model with a memory (Transformer-XL): the memory kept per layer at evaluation
                      (default: the config's mem_len; longer works, relative positions extend). Such a
                      model reads the split in order in --batch-size lanes, the memory carried from
                      segment to segment; --max-batches then scores the first N segments of each lane
  --set KEY=VALUE     override a model config key (repeatable; model.* only), e.g.
                      --set model.attention.kind=performer or
                      --set 'model.attention={"kind":"performer","options":{"m":128}}'
  --threads T         worker threads
  --json              print one JSON object instead of a sentence
)";

}  // namespace

int run_eval(int argc, char** argv) {
  const char* cmd = "eval";
  std::string ckpt, data_path, split = "valid";
  int64_t max_batches = 0, batch_size = 16, context = 0, mem_len = 0;
  std::vector<std::string> sets;
  bool json = false, data_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") {
      json = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      EF_CHECK(ckpt.empty(), ValueError, "eval: unexpected argument '", a, "' (one checkpoint only)");
      ckpt = a;
      continue;
    }
    std::string v = flag_value(cmd, argc, argv, i);
    if (a == "--data") data_path = v, data_given = true;
    else if (a == "--split") split = v;
    else if (a == "--max-batches") max_batches = parse_int(cmd, a, v);
    else if (a == "--batch-size") batch_size = parse_int(cmd, a, v);
    else if (a == "--context") {
      context = parse_int(cmd, a, v);  // 0 inside means the model's context; a given one is >= 1
      EF_CHECK(context >= 1, ValueError, "eval: --context must be >= 1, got ", context);
    }
    else if (a == "--mem-len") {
      mem_len = parse_int(cmd, a, v);
      EF_CHECK(mem_len >= 1, ValueError, "eval: --mem-len must be >= 1, got ", mem_len);
    }
    else if (a == "--threads") set_threads(cmd, v);
    else if (a == "--set") sets.push_back(v);
    else throw ValueError("eval: unknown option '" + a + "'; see eformer eval --help");
  }
  EF_CHECK(!ckpt.empty(), ValueError, "eval: missing the checkpoint; usage: eformer eval CKPT [options]");
  EF_CHECK(max_batches >= 0, ValueError, "eval: --max-batches must be >= 0, got ", max_batches);
  EF_CHECK(batch_size >= 1, ValueError, "eval: --batch-size must be >= 1, got ", batch_size);
  data::Split s = data::parse_split(split);

  train::Checkpoint checkpoint = train::read_checkpoint(ckpt);
  if (!data_given) data_path = checkpoint.info.train_config.value("data", std::string());
  std::shared_ptr<models::LanguageModel> model;
  if (sets.empty()) {
    model = train::load_model(checkpoint);
  } else {
    train::TransferredModel t =
        train::transfer_model(checkpoint, override_model(cmd, checkpoint.model_config, sets));
    print_fresh_buffers(t.fresh_buffers);
    model = t.model;
  }
  checkpoint = {};
  data::Corpus corpus = load_corpus(data_path);
  EF_CHECK(mem_len == 0 || model->has_memory(), ValueError,
           "eval: --mem-len is for a model with a memory (memory.kind 'xl' or 'compressive'); this one has none");
  data::TokenSource tokens(corpus, s);
  train::EvalResult r = model->has_memory()
                            ? train::evaluate_with_memory(*model, tokens, context, batch_size, max_batches, mem_len)
                            : train::evaluate(*model, tokens, context, batch_size, max_batches);
  if (json) {
    nlohmann::json j{{"checkpoint", ckpt},
                     {"data", corpus.source()},
                     {"split", data::split_name(s)},
                     {"bits_per_char", r.bits_per_char},
                     {"unit", corpus.unit()},
                     {"loss", r.loss},
                     {"targets", r.targets},
                     {"batches", r.batches},
                     {"total_batches", r.total_batches}};
    if (model->has_memory()) j["mem_len"] = mem_len > 0 ? mem_len : model->config().memory.mem_len;
    std::printf("%s\n", j.dump().c_str());
  } else {
    const char* unit = corpus.unit().c_str();
    std::printf("%s bits/%s %.4f (loss %.4f nats/%s over %lld %ss%s)\n", data::split_name(s), unit,
                r.bits_per_char, r.loss, unit, (long long)r.targets, corpus.unit() == "char" ? "character" : unit,
                r.batches < r.total_batches
                    ? (", " + std::to_string(r.batches) + " of " + std::to_string(r.total_batches) + " batches")
                          .c_str()
                    : "");
  }
  return 0;
}

}  // namespace eformer::cli
