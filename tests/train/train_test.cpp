// The train layer: sampling (greedy, temperature, top-k, top-p), generation, evaluation, checkpoint
// validation, config parsing, and exact resume of the training loop.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "eformer/io/atomic_file.h"
#include "eformer/io/safetensors.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"
#include "eformer/train/evaluate.h"
#include "eformer/train/generate.h"
#include "eformer/train/trainer.h"

#include "../test_util.h"

namespace eformer::train {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

using testing::error_of;

models::ModelConfig tiny_config() {
  models::ModelConfig c;
  c.d_model = 16;
  c.n_heads = 2;
  c.n_layers = 2;
  c.d_ff = 32;
  c.max_len = 16;
  c.dropout = 0.1f;
  return c;
}

std::string corpus_text() {
  std::string s;
  for (int i = 0; i < 200; ++i) s += "the quick brown fox " + std::to_string(i % 7) + " jumps over the lazy dog.\n";
  return s;
}

std::vector<double> softmax(const std::vector<float>& l, double t = 1.0) {
  double m = *std::max_element(l.begin(), l.end()), total = 0;
  std::vector<double> p;
  for (float x : l) total += std::exp((x - m) / t);
  for (float x : l) p.push_back(std::exp((x - m) / t) / total);
  return p;
}

// ---- sampling ----

TEST(Sampling, GreedyIsOneHotAtTheFirstMaximum) {
  std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f};
  auto p = sampling_distribution(l.data(), 4, {.temperature = 0.0});
  EXPECT_EQ(p, (std::vector<double>{0, 1, 0, 0}));
  Sampler s({.temperature = 0.0});
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.next(l.data(), 4), 1);
}

TEST(Sampling, TemperatureScalesTheLogits) {
  std::vector<float> l = {1.0f, 2.0f, 0.0f, -1.0f};
  auto p = sampling_distribution(l.data(), 4, {.temperature = 2.0});
  auto q = softmax(l, 2.0);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(p[size_t(i)], q[size_t(i)], 1e-12);
}

TEST(Sampling, TopKKeepsTheKLargestRenormalised) {
  std::vector<float> l = {1.0f, 5.0f, 3.0f, 2.0f, 4.0f};
  auto p = sampling_distribution(l.data(), 5, {.top_k = 2});
  auto q = softmax({5.0f, 4.0f});
  EXPECT_EQ(p[0], 0.0);
  EXPECT_EQ(p[2], 0.0);
  EXPECT_EQ(p[3], 0.0);
  EXPECT_NEAR(p[1], q[0], 1e-12);
  EXPECT_NEAR(p[4], q[1], 1e-12);
  // top_k >= vocab is no mask; ties with the k-th are kept.
  auto all = sampling_distribution(l.data(), 5, {.top_k = 9});
  for (double x : all) EXPECT_GT(x, 0.0);
  std::vector<float> tie = {1.0f, 2.0f, 2.0f, 0.0f};
  auto t = sampling_distribution(tie.data(), 4, {.top_k = 1});
  EXPECT_NEAR(t[1], 0.5, 1e-12);
  EXPECT_NEAR(t[2], 0.5, 1e-12);
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
  std::vector<float> l = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  auto p = sampling_distribution(l.data(), 4, {.top_p = 0.7});  // 0.5 < 0.7 <= 0.5 + 0.3
  EXPECT_NEAR(p[1], 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(p[3], 0.3 / 0.8, 1e-6);
  EXPECT_EQ(p[0], 0.0);
  EXPECT_EQ(p[2], 0.0);
  auto one = sampling_distribution(l.data(), 4, {.top_p = 0.4});  // the top token alone
  EXPECT_EQ(one, (std::vector<double>{0, 1, 0, 0}));
  // top-k first, then top-p over what is left.
  auto both = sampling_distribution(l.data(), 4, {.top_k = 3, .top_p = 0.9});
  EXPECT_EQ(both[2], 0.0);
  EXPECT_NEAR(both[0] + both[1] + both[3], 1.0, 1e-12);
}

TEST(Sampling, SeededDrawsAreReproducibleAndFollowTheDistribution) {
  std::vector<float> l = {0.0f, 1.0f, 2.0f, -5.0f};
  SamplingOptions o{.temperature = 1.0, .seed = 7};
  Sampler a(o), b(o), c({.temperature = 1.0, .seed = 8});
  std::vector<int> counts(4, 0);
  bool differs = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    int64_t x = a.next(l.data(), 4);
    EXPECT_EQ(x, b.next(l.data(), 4));
    differs |= x != c.next(l.data(), 4);
    counts[size_t(x)]++;
  }
  EXPECT_TRUE(differs);
  auto q = softmax(l);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(counts[size_t(i)] / double(n), q[size_t(i)], 0.015);
}

TEST(Sampling, RejectsBadOptions) {
  std::vector<float> l = {0.0f, 1.0f};
  EXPECT_NE(error_of<ValueError>([&] { sampling_distribution(l.data(), 2, {.temperature = -1}); }).find("temperature"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([&] { sampling_distribution(l.data(), 2, {.top_k = -1}); }).find("top_k"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([&] { sampling_distribution(l.data(), 2, {.top_p = 0.0}); }).find("top_p"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([&] { sampling_distribution(l.data(), 2, {.top_p = 1.5}); }).find("top_p"),
            std::string::npos);
  std::vector<float> nan = {0.0f, NAN};
  EXPECT_NE(error_of<ValueError>([&] { sampling_distribution(nan.data(), 2, {}); }).find("NaN"), std::string::npos);
}

// ---- generation and evaluation on a tiny model ----

TEST(Generate, GreedyEqualsTheArgmaxOfTheFullForward) {
  rng::manual_seed(1);
  models::LanguageModel model(tiny_config());
  std::vector<int64_t> prompt = {'a', 'b', 'c'};
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 10;
  std::vector<int64_t> got = generate(model, prompt, o);
  ASSERT_EQ(got.size(), 10u);
  EXPECT_TRUE(model.is_training());  // mode restored
  model.eval();
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> seq = prompt;
  for (int64_t token : got) {
    Tensor logits = model.forward(Tensor::from_vector(seq, {1, int64_t(seq.size())})).contiguous_data();
    const float* last = logits.data<float>() + (int64_t(seq.size()) - 1) * 256;
    EXPECT_EQ(token, std::max_element(last, last + 256) - last);
    seq.push_back(token);
  }
}

TEST(Generate, SeededAndPoliciesWhenTheContextIsFull) {
  rng::manual_seed(2);
  models::LanguageModel model(tiny_config());
  GenerateOptions o;
  o.sampling = {.temperature = 1.0, .top_k = 50, .top_p = 0.9, .seed = 3};
  o.max_new_tokens = 40;  // more than max_len = 16: slides
  auto gen_state = rng::default_generator().state();
  auto a = generate_text(model, "hello", o);
  EXPECT_EQ(rng::default_generator().state(), gen_state);  // own generator
  EXPECT_EQ(a.size(), 40u);
  EXPECT_EQ(a, generate_text(model, "hello", o));
  o.sampling.seed = 4;
  EXPECT_NE(a, generate_text(model, "hello", o));
  o.on_full = ContextPolicy::Stop;
  EXPECT_EQ(generate_text(model, "hello", o).size(), 16u - 5u + 1u);  // fills the context, then one more
  // A prompt longer than the context keeps its end; an empty prompt works.
  EXPECT_EQ(generate_text(model, std::string(40, 'x'), o).size(), 1u);
  o.on_full = ContextPolicy::Slide;
  EXPECT_EQ(generate_text(model, "", o).size(), 40u);
  std::vector<int64_t> bad = {300};
  EXPECT_THROW(generate(model, bad, o), IndexError);
}

TEST(Evaluate, BitsPerCharIsTheMeanLossOverEveryTarget) {
  rng::manual_seed(3);
  models::LanguageModel model(tiny_config());
  data::Corpus corpus = data::Corpus::from_text(corpus_text());
  data::TokenSource valid(corpus, data::Split::Valid);
  auto gen_state = rng::default_generator().state();
  EvalResult r = evaluate(model, valid, 0, 4);
  EXPECT_EQ(rng::default_generator().state(), gen_state);
  EXPECT_TRUE(model.is_training());
  EXPECT_EQ(r.targets, valid.size() - 1);
  EXPECT_EQ(r.batches, r.total_batches);
  EXPECT_NEAR(r.bits_per_char, r.loss / std::log(2.0), 1e-12);
  // Untrained: close to uniform over 256 bytes (8 bits).
  EXPECT_NEAR(r.bits_per_char, 8.0, 1.0);
  // By hand: the mean of the windows' summed losses.
  data::EvalWindows w(valid, 16, 4);
  model.eval();
  double sum = 0;
  for (int64_t i = 0; i < w.num_batches(); ++i) {
    data::Batch b = w.batch(i);
    autograd::NoGradGuard no_grad;
    sum += model.loss(b.inputs, b.targets).item() * double(b.targets.numel());
  }
  EXPECT_NEAR(r.loss, sum / double(r.targets), 1e-4);
  EvalResult part = evaluate(model, valid, 0, 4, 2);
  EXPECT_EQ(part.batches, 2);
  EXPECT_EQ(part.targets, 2 * 4 * 16);
}

// ---- checkpoints ----

struct Saved {
  TempDir dir;
  std::string path;
  std::shared_ptr<models::LanguageModel> model;
  Saved() {
    rng::manual_seed(5);
    model = std::make_shared<models::LanguageModel>(tiny_config());
    optim::AdamW opt(model->parameters());
    Tensor ids = Tensor::from_vector(std::vector<int64_t>(32, 7), {2, 16});
    backward(model->loss(ids, ids));
    opt.step();
    path = dir.file("ckpt.safetensors");
    CheckpointInfo info;
    info.step = 12;
    info.rng = {5, 0, 1234};
    info.elapsed_s = 1.5;
    TrainConfig train;
    train.steps = 30;
    info.train_config = to_json(train);
    save_checkpoint(path, *model, &opt, info);
  }
};

TEST(TrainCheckpoint, RoundTripsWeightsOptimizerAndState) {
  Saved s;
  Checkpoint c = read_checkpoint(s.path);
  EXPECT_EQ(c.info.step, 12);
  EXPECT_EQ(c.info.rng, (rng::Generator::State{5, 0, 1234}));
  EXPECT_EQ(c.info.elapsed_s, 1.5);
  EXPECT_EQ(parse_train_config(c.info.train_config).steps, 30);
  EXPECT_EQ(models::to_json(c.model_config), models::to_json(tiny_config()));
  EXPECT_TRUE(c.optimizer_state.count("step"));
  EXPECT_TRUE(c.optimizer_state.count("0.exp_avg"));
  auto loaded = load_model(c);
  EXPECT_FALSE(loaded->is_training());
  auto a = s.model->state_dict(), b = loaded->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].second.to_vector(), b[i].second.to_vector()) << a[i].first;
  optim::AdamW opt(loaded->parameters());
  restore_optimizer(c, opt);
  EXPECT_EQ(opt.step_count(), 1);
}

TEST(TrainCheckpoint, RejectsWhatIsNotAValidCheckpoint) {
  Saved s;
  io::SafetensorsFile f = io::load_safetensors(s.path);
  auto rewrite = [&](const std::string& name, std::map<std::string, Tensor> tensors,
                     std::map<std::string, std::string> metadata) {
    std::string p = s.dir.file(name);
    metadata.erase("checksums");  // as a file from before checksums (those of f no longer fit)
    io::save_safetensors(p, tensors, metadata);
    return p;
  };
  // Plain weights (no eformer metadata).
  std::string plain = rewrite("plain.safetensors", f.tensors, {});
  EXPECT_NE(error_of<IOError>([&] { read_checkpoint(plain); }).find("not an eformer checkpoint"), std::string::npos);
  // A newer format version.
  auto meta = f.metadata;
  meta["format_version"] = "99";
  std::string newer = rewrite("newer.safetensors", f.tensors, meta);
  EXPECT_NE(error_of<IOError>([&] { read_checkpoint(newer); }).find("version 99"), std::string::npos);
  // Missing metadata.
  meta = f.metadata;
  meta.erase("rng");
  std::string no_rng = rewrite("no_rng.safetensors", f.tensors, meta);
  EXPECT_NE(error_of<IOError>([&] { read_checkpoint(no_rng); }).find("'rng'"), std::string::npos);
  // A missing weight.
  auto tensors = f.tensors;
  tensors.erase("model.blocks.0.ln1.weight");
  std::string missing = rewrite("missing.safetensors", tensors, f.metadata);
  Checkpoint c = read_checkpoint(missing);
  EXPECT_NE(error_of<ValueError>([&] { load_model(c); }).find("blocks.0.ln1.weight"), std::string::npos);
  // A wrong shape.
  tensors = f.tensors;
  tensors["model.blocks.0.ln1.weight"] = Tensor::zeros({3});
  std::string wrong = rewrite("wrong.safetensors", tensors, f.metadata);
  EXPECT_NE(error_of<ShapeError>([&] { load_model(read_checkpoint(wrong)); }).find("blocks.0.ln1.weight"),
            std::string::npos);
  // A stray tensor.
  tensors = f.tensors;
  tensors["extra"] = Tensor::zeros({1});
  std::string stray = rewrite("stray.safetensors", tensors, f.metadata);
  EXPECT_NE(error_of<IOError>([&] { read_checkpoint(stray); }).find("'extra'"), std::string::npos);
  // No optimizer state: loads, but cannot resume.
  tensors.clear();
  for (auto& [k, v] : f.tensors)
    if (k.starts_with("model.")) tensors[k] = v;
  std::string weights_only = rewrite("weights.safetensors", tensors, f.metadata);
  Checkpoint w = read_checkpoint(weights_only);
  auto m = load_model(w);
  optim::AdamW opt(m->parameters());
  EXPECT_NE(error_of<IOError>([&] { restore_optimizer(w, opt); }).find("no optimizer state"), std::string::npos);
  // Truncated and missing files.
  std::string bytes = io::read_file(s.path);
  std::string cut = s.dir.file("cut.safetensors");
  io::write_file_atomic(cut, std::string_view(bytes).substr(0, bytes.size() / 2));
  EXPECT_NE(error_of<IOError>([&] { read_checkpoint(cut); }).find("cut.safetensors"), std::string::npos);
  EXPECT_THROW(read_checkpoint(s.dir.file("absent.safetensors")), IOError);
}

// ---- configs ----

TEST(TrainConfig, ParsesStrictlyAndOverrides) {
  TrainConfig c = parse_train_config({{"steps", 5}, {"lr", 0.01}, {"seed", 3}});
  EXPECT_EQ(c.steps, 5);
  EXPECT_EQ(c.lr, 0.01);
  EXPECT_EQ(c.seed, 3u);
  EXPECT_EQ(parse_train_config(to_json(c)).lr, 0.01);
  EXPECT_NE(error_of<ValueError>([] { parse_train_config({{"stepz", 5}}); }).find("unknown key 'stepz'"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { parse_train_config({{"steps", 1.5}}); }).find("'steps'"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { parse_train_config({{"lr", "fast"}}); }).find("'lr'"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { parse_train_config({{"batch_size", 0}}); }).find("'batch_size'"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { parse_train_config({{"seed", -1}}); }).find("'seed'"), std::string::npos);

  nlohmann::json run = {{"model", {{"d_model", 32}}}, {"train", {{"lr", 0.1}}}};
  apply_override(run, "lr=0.5");
  apply_override(run, "d_model=64");
  apply_override(run, "model.attention.kind=full");
  apply_override(run, "train.data=some/path");
  EXPECT_EQ(run["train"]["lr"], 0.5);
  EXPECT_EQ(run["model"]["d_model"], 64);
  EXPECT_EQ(run["model"]["attention"]["kind"], "full");
  EXPECT_EQ(run["train"]["data"], "some/path");
  nlohmann::json short_form = {{"model", {{"attention", "flash"}}}};  // "attention": "flash" = {"kind": "flash"}
  apply_override(short_form, "model.attention.kind=performer");
  apply_override(short_form, "model.attention.options.m=64");
  EXPECT_EQ(short_form["model"]["attention"], nlohmann::json::parse(R"({"kind": "performer", "options": {"m": 64}})"));
  EXPECT_THROW(apply_override(run, "novalue"), ValueError);
  EXPECT_THROW(apply_override(run, "model=3"), ValueError);
  EXPECT_THROW(parse_run_config({{"modle", nlohmann::json::object()}}), ValueError);
  EXPECT_THROW(preset_path("no-such-preset"), ValueError);
  RunConfig small = parse_run_config(read_run_json(preset_path("small")));
  EXPECT_EQ(small.model.n_layers, 4);
  EXPECT_EQ(small.model.d_model, 256);
  RunConfig tiny = parse_run_config(read_run_json(preset_path("tiny")));
  EXPECT_EQ(tiny.model.max_len, 64);
}

// ---- the loop: resume is exact ----

std::vector<std::string> train_losses(const std::string& log_path) {
  std::vector<std::string> out;
  std::ifstream in(log_path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["event"] == "train") out.push_back(std::to_string(j["step"].get<int>()) + ":" + j["loss_hex"].get<std::string>());
  }
  return out;
}

// Trains `model` 8 steps in one go and 5 + 3 steps with a checkpoint in between: losses, weights,
// buffers and the final evaluation agree bit for bit.
void expect_resume_is_exact(const models::ModelConfig& model) {
  TempDir dir;
  data::Corpus corpus = data::Corpus::from_text(corpus_text());
  TrainConfig c;
  c.steps = 8;
  c.batch_size = 3;
  c.lr = 3e-3;
  c.warmup_steps = 2;
  c.log_every = 1;
  c.eval_every = 3;
  c.eval_batches = 2;
  c.seed = 11;
  c.log_path = dir.file("a.jsonl");
  c.checkpoint_path = dir.file("a.safetensors");
  Trainer a(model, c, corpus);
  TrainResult ra = a.run();
  EXPECT_EQ(ra.steps, 8);
  EXPECT_EQ(ra.reason, "steps");
  EXPECT_TRUE(std::isfinite(ra.valid_bits_per_char));

  // The same run stopped after 5 steps (its checkpoint is what a killed run leaves behind), then
  // resumed by a new trainer from the file alone.
  c.log_path = dir.file("b.jsonl");
  c.checkpoint_path = dir.file("b.safetensors");
  {
    Trainer b(model, c, corpus);
    TrainResult rb = b.run(/*stop_at_step=*/5);
    EXPECT_EQ(rb.steps, 5);
    EXPECT_EQ(rb.reason, "stopped");
  }
  rng::manual_seed(999);  // the resumed run must not depend on the process's generator
  Checkpoint ckpt = read_checkpoint(c.checkpoint_path);
  EXPECT_EQ(ckpt.info.step, 5);
  Trainer resumed(ckpt, parse_train_config(ckpt.info.train_config), corpus);
  TrainResult rr = resumed.run();
  EXPECT_EQ(rr.steps, 8);
  EXPECT_EQ(train_losses(dir.file("a.jsonl")), train_losses(dir.file("b.jsonl")));
  EXPECT_EQ(train_losses(dir.file("a.jsonl")).size(), 8u);
  auto wa = a.model().state_dict(), wb = resumed.model().state_dict();
  for (size_t i = 0; i < wa.size(); ++i) EXPECT_EQ(wa[i].second.to_vector(), wb[i].second.to_vector()) << wa[i].first;
  EXPECT_EQ(ra.valid_bits_per_char, rr.valid_bits_per_char);
}

TEST(Trainer, ResumedRunMatchesAnUninterruptedOneBitForBit) { expect_resume_is_exact(tiny_config()); }

// The routing mechanism's k-means centroids are training state outside the optimizer (a buffer
// updated by every training forward): resumed from the checkpoint, the run continues bit for bit,
// under the recompute policy too (whose replayed forwards must not update them twice).
TEST(Trainer, ResumedRoutingRunKeepsItsCentroidsBitForBit) {
  models::ModelConfig model = tiny_config();
  model.attention = {"routing", {{"clusters", 3}, {"window", 4}, {"decay", 0.9}, {"local_heads", 1}}};
  expect_resume_is_exact(model);
  model.block = "recompute";
  expect_resume_is_exact(model);
  // ...and the centroids really move in training.
  data::Corpus corpus = data::Corpus::from_text(corpus_text());
  TrainConfig c;
  c.steps = 2;
  c.batch_size = 2;
  c.seed = 5;
  Trainer t(model, c, corpus);
  auto before = t.model().state_dict();
  t.run();
  auto after = t.model().state_dict();
  int moved = 0;
  for (size_t i = 0; i < before.size(); ++i)
    if (before[i].first.find("centroids") != std::string::npos)
      moved += before[i].second.to_vector() != after[i].second.to_vector();
  EXPECT_EQ(moved, 2) << "both layers' centroids move";
}

TEST(Trainer, RejectsARunWithoutALengthAndATooSmallCorpus) {
  data::Corpus corpus = data::Corpus::from_text(corpus_text());
  EXPECT_THROW(Trainer(tiny_config(), TrainConfig{}, corpus), ValueError);
  data::Corpus small = data::Corpus::from_text("tiny text");
  TrainConfig one;
  one.steps = 1;
  EXPECT_THROW(Trainer(tiny_config(), one, small), ValueError);
}

}  // namespace
}  // namespace eformer::train
