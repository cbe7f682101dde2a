// `eformer generate`: streams text sampled from a checkpoint's model to stdout, or (--png) draws a
// Fashion-MNIST-style image pixel by pixel.
#include <cstdio>
#include <string>

#include "common.h"
#include "eformer/io/png.h"
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
  --png FILE             instead of text, draw a 28 x 28 grey image pixel by pixel (a model trained
                         with --data fashion-mnist: after the start token 0, 784 grey levels in
                         raster order) and write it to FILE as a PNG; temperature defaults to 1
                         (the model's own distribution); --prompt is not used
  --threads T            worker threads
)";

// A 28 x 28 image sampled from the model after the start token 0 (data/fashion_mnist.h).
int write_generated_image(models::LanguageModel& model, train::GenerateOptions o, const std::string& path) {
  const int64_t pixels = data::kFashionMnistPixels, side = data::kFashionMnistSide;
  EF_CHECK(model.config().max_len >= pixels && model.config().vocab_size == 256, ValueError,
           "generate: --png needs a model of 256 grey levels and context >= ", pixels,
           " (trained with --data fashion-mnist); this one has vocab_size ", model.config().vocab_size,
           " and context ", model.config().max_len);
  o.max_new_tokens = pixels;
  o.on_full = train::ContextPolicy::Stop;
  std::vector<int64_t> ids = train::generate(model, {0}, o);
  io::GreyImage image{side, side, std::vector<uint8_t>(ids.begin(), ids.end())};
  io::write_png(path, image);
  std::printf("wrote %s (%lld x %lld grey levels, seed %llu, temperature %g)\n", path.c_str(), (long long)side,
              (long long)side, (unsigned long long)o.sampling.seed, o.sampling.temperature);
  return 0;
}

}  // namespace

int run_generate(int argc, char** argv) {
  const char* cmd = "generate";
  std::string ckpt, prompt, png;
  train::GenerateOptions o;
  bool echo = true, temperature_given = false;  // default temperature: 0.8 for text, 1 for an image
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--greedy") {
      o.sampling.temperature = 0.0;
      temperature_given = true;
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
    else if (a == "--png") png = v;
    else if (a == "--max-new-tokens") o.max_new_tokens = parse_int(cmd, a, v);
    else if (a == "--temperature") o.sampling.temperature = parse_double(cmd, a, v), temperature_given = true;
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
  if (!temperature_given) o.sampling.temperature = png.empty() ? 0.8 : 1.0;
  train::validate(o.sampling);
  auto model = train::load_model(ckpt);
  if (!png.empty()) return write_generated_image(*model, o, png);
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
