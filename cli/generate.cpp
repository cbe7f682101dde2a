// `eformer generate`: streams text sampled from a checkpoint's model to stdout.
#include <cstdio>
#include <string>

#include "common.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/generate.h"

namespace eformer::cli {
namespace {

constexpr const char* kHelp = R"(usage: eformer generate CKPT [options]

Continues a prompt with text sampled from the model, printed to stdout as it is generated. The same
seed and options give the same text. When the model's context is full, decoding restarts on the
last half of the context (re-encoded) and goes on; --on-full stop ends the text there instead.

  --prompt TEXT          the text to continue (default: a newline)
  --max-new-tokens N     bytes to generate (default 256)
  --temperature T        softmax temperature; 0 is greedy (argmax) (default 0.8)
  --greedy               the same as --temperature 0
  --top-k K              sample among the K most likely bytes (default 0: off)
  --top-p P              sample among the most likely bytes whose probability adds up to P (default 1: off)
  --seed S               sampling seed (default 0)
  --on-full slide|stop   what to do when the context is full (default slide)
  --mem-len M            a model with a memory (Transformer-XL): the memory kept per layer (default: the
                         config's); such a model streams any length with no restarts
  --no-echo              print only the generated text, not the prompt before it
  --threads T            worker threads
)";

}  // namespace

int run_generate(int argc, char** argv) {
  const char* cmd = "generate";
  std::string ckpt, prompt;
  train::GenerateOptions o;
  o.sampling.temperature = 0.8;
  bool echo = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--greedy") {
      o.sampling.temperature = 0.0;
      continue;
    }
    if (a == "--no-echo") {
      echo = false;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      EF_CHECK(ckpt.empty(), ValueError, "generate: unexpected argument '", a, "' (one checkpoint only)");
      ckpt = a;
      continue;
    }
    std::string v = flag_value(cmd, argc, argv, i);
    if (a == "--prompt") prompt = v;
    else if (a == "--max-new-tokens") o.max_new_tokens = parse_int(cmd, a, v);
    else if (a == "--temperature") o.sampling.temperature = parse_double(cmd, a, v);
    else if (a == "--top-k") o.sampling.top_k = parse_int(cmd, a, v);
    else if (a == "--top-p") o.sampling.top_p = parse_double(cmd, a, v);
    else if (a == "--seed") o.sampling.seed = parse_uint(cmd, a, v);
    else if (a == "--on-full") {
      EF_CHECK(v == "slide" || v == "stop", ValueError, "generate: --on-full expects slide or stop, got '", v, "'");
      o.on_full = v == "slide" ? train::ContextPolicy::Slide : train::ContextPolicy::Stop;
    } else if (a == "--mem-len") {
      o.mem_len = parse_int(cmd, a, v);
      EF_CHECK(o.mem_len >= 1, ValueError, "generate: --mem-len must be >= 1, got ", o.mem_len);
    } else if (a == "--threads") set_threads(cmd, v);
    else throw ValueError("generate: unknown option '" + a + "'; see eformer generate --help");
  }
  EF_CHECK(!ckpt.empty(), ValueError, "generate: missing the checkpoint; usage: eformer generate CKPT [options]");
  EF_CHECK(o.max_new_tokens >= 0, ValueError, "generate: --max-new-tokens must be >= 0, got ", o.max_new_tokens);
  train::validate(o.sampling);
  auto model = train::load_model(ckpt);
  std::fprintf(stderr, "generate: streaming through %s\n", model->streaming_summary().c_str());

  data::Utf8StreamDecoder decoder;
  if (echo) {
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
  }
  train::generate_text(*model, prompt, o, [&](int64_t token) {
    std::string text = decoder.push(token);
    if (!text.empty()) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  std::string rest = decoder.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace eformer::cli
