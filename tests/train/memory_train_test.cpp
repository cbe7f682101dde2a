// Training a model with a memory (Transformer-XL): the memory is training state, so a run stopped
// and resumed from its checkpoint continues bit for bit; the checkpoint holds the memory and
// rejects one that does not fit; evaluation reads the split in order with a memory.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>

#include "eformer/core/rng.h"
#include "eformer/data/segments.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"
#include "eformer/train/evaluate.h"
#include "eformer/train/trainer.h"

#include "../test_util.h"

namespace eformer::train {
namespace {

using testing::TempDir;

models::ModelConfig tiny_xl() {
  return models::parse_model_config({{"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32},
                                     {"max_len", 16}, {"dropout", 0.1}, {"attention_dropout", 0.1},
                                     {"memory", {{"kind", "xl"}, {"mem_len", 12}}}});
}

std::string text() {
  std::string s;
  for (int i = 0; i < 200; ++i) s += "in the beginning " + std::to_string(i % 11) + " was the word, and the word.\n";
  return s;
}

std::vector<std::string> train_losses(const std::string& log_path) {
  std::vector<std::string> out;
  std::ifstream in(log_path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["event"] == "train") out.push_back(std::to_string(j["step"].get<int>()) + ":" + j["loss_hex"].get<std::string>());
  }
  return out;
}

TrainConfig run_config(const TempDir& dir, const std::string& name) {
  TrainConfig c;
  c.steps = 9;
  c.batch_size = 3;
  c.lr = 3e-3;
  c.warmup_steps = 2;
  c.log_every = 1;
  c.eval_every = 4;
  c.eval_batches = 3;
  c.seed = 5;
  c.log_path = dir.file(name + ".jsonl");
  c.checkpoint_path = dir.file(name + ".safetensors");
  return c;
}

TEST(XLTrainer, ResumedRunWithMemoryMatchesAnUninterruptedOneBitForBit) {
  TempDir dir;
  data::Corpus corpus = data::Corpus::from_text(text());
  Trainer a(tiny_xl(), run_config(dir, "a"), corpus);
  TrainResult ra = a.run();
  EXPECT_EQ(ra.steps, 9);
  EXPECT_EQ(a.memory().length(), 12);
  {
    Trainer b(tiny_xl(), run_config(dir, "b"), corpus);
    EXPECT_EQ(b.run(/*stop_at_step=*/5).steps, 5);
  }
  Checkpoint ckpt = read_checkpoint(dir.file("b.safetensors"));
  ASSERT_EQ(ckpt.memory_state.size(), 2u);  // the memory of step 5 (mid-pass, so it matters)
  EXPECT_EQ(ckpt.memory_state.at("0").shape(), (Shape{3, 12, 16}));
  rng::manual_seed(999);
  Trainer resumed(ckpt, parse_train_config(ckpt.info.train_config), corpus);
  TrainResult rr = resumed.run();
  EXPECT_EQ(train_losses(dir.file("a.jsonl")), train_losses(dir.file("b.jsonl")));
  EXPECT_EQ(train_losses(dir.file("a.jsonl")).size(), 9u);
  EXPECT_EQ(ra.valid_bits_per_char, rr.valid_bits_per_char);
  EXPECT_EQ(testing::values(a.memory().layers[1]), testing::values(resumed.memory().layers[1]));

  // Resumed without its memory, the run does not continue the same way (the memory is state).
  Checkpoint forgetful = ckpt;
  forgetful.memory_state.clear();
  TrainConfig c = parse_train_config(ckpt.info.train_config);
  c.log_path = dir.file("c.jsonl");
  c.checkpoint_path = dir.file("c.safetensors");
  Trainer without(forgetful, c, corpus);
  without.run(/*stop_at_step=*/6);
  EXPECT_NE(train_losses(dir.file("c.jsonl")).back(), train_losses(dir.file("a.jsonl"))[5]);

  // A memory that does not fit the model is refused with the checkpoint's name.
  Checkpoint wrong = ckpt;
  wrong.memory_state.erase("1");
  EXPECT_NE(testing::error_of<ShapeError>([&] { Trainer t(wrong, c, corpus); }).find("memory of 1 layers"),
            std::string::npos);
}

models::ModelConfig tiny_compressive(const std::string& compression) {
  nlohmann::json j = models::to_json(tiny_xl());
  j["memory"] = {{"kind", "compressive"}, {"mem_len", 12}, {"cmem_len", 8}, {"compression_rate", 2},
                 {"compression", compression}};
  return models::parse_model_config(j);
}

std::vector<double> reconstruction_losses(const std::string& log_path) {
  std::vector<double> out;
  std::ifstream in(log_path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["event"] == "train") out.push_back(j.value("reconstruction_loss", -1.0));
  }
  return out;
}

// Every compression function: the compressed memory (and, for most_used, the usage recomputed from
// the memory and the segment) is state a resume restores bit for bit; the log has the reconstruction
// loss of every step (trained on by conv and dilated_conv, a measure only for the others).
TEST(CompressiveTrainer, ResumedRunMatchesAnUninterruptedOneBitForBitWithEachCompression) {
  for (const char* f : {"max_pool", "mean_pool", "conv", "dilated_conv", "most_used"}) {
    SCOPED_TRACE(f);
    TempDir dir;
    data::Corpus corpus = data::Corpus::from_text(text());
    Trainer a(tiny_compressive(f), run_config(dir, "a"), corpus);
    TrainResult ra = a.run();
    EXPECT_TRUE(std::isfinite(ra.last_loss));
    EXPECT_EQ(a.memory().compressed_length(), 8);
    {
      Trainer b(tiny_compressive(f), run_config(dir, "b"), corpus);
      b.run(/*stop_at_step=*/5);
    }
    Checkpoint ckpt = read_checkpoint(dir.file("b.safetensors"));
    EXPECT_EQ(ckpt.memory_state.at("compressed.1").shape(), (Shape{3, 8, 16}));
    rng::manual_seed(999);
    Trainer resumed(ckpt, parse_train_config(ckpt.info.train_config), corpus);
    TrainResult rr = resumed.run();
    EXPECT_EQ(train_losses(dir.file("a.jsonl")), train_losses(dir.file("b.jsonl")));
    EXPECT_EQ(ra.valid_bits_per_char, rr.valid_bits_per_char);
    EXPECT_EQ(testing::values(a.memory().compressed[1]), testing::values(resumed.memory().compressed[1]));
    const auto recon = reconstruction_losses(dir.file("a.jsonl"));
    ASSERT_EQ(recon.size(), 9u);
    // Segments of 16 with a memory of 12: every step evicts (the first, 4 of its own states).
    for (size_t i = 0; i < recon.size(); ++i) EXPECT_TRUE(std::isfinite(recon[i]) && recon[i] >= 0.0) << i;
  }
}

std::vector<nlohmann::json> train_lines(const std::string& log_path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(log_path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["event"] == "train") out.push_back(j);
  }
  return out;
}

// The compressors learn only from the reconstruction loss, whose gradients are far larger than the
// model's: they are clipped as their own group, so the model's gradient norm (and its clip) is the same
// with a learned compressor as with a parameter-free one. At step 1 the two models are the same but for
// the compressor (the compressed memory is first used at step 2).
TEST(CompressiveTrainer, TheCompressorsAreClippedApartFromTheModel) {
  std::map<std::string, std::vector<nlohmann::json>> lines;
  for (const char* f : {"mean_pool", "conv", "dilated_conv"}) {
    TempDir dir;
    rng::manual_seed(11);
    TrainConfig c = run_config(dir, "a");
    c.steps = 2;
    nlohmann::json model = models::to_json(tiny_compressive(f));
    model["dropout"] = model["attention_dropout"] = 0.0;  // the compressor's init draws would shift the masks
    Trainer t(models::parse_model_config(model), c, data::Corpus::from_text(text()));
    t.run();
    lines[f] = train_lines(dir.file("a.jsonl"));
    ASSERT_EQ(lines[f].size(), 2u) << f;
  }
  const double model_norm = lines["mean_pool"][0]["grad_norm"].get<double>();
  EXPECT_FALSE(lines["mean_pool"][0].contains("compressor_grad_norm"));
  for (const char* f : {"conv", "dilated_conv"}) {
    SCOPED_TRACE(f);
    EXPECT_DOUBLE_EQ(lines[f][0]["grad_norm"].get<double>(), model_norm);
    for (const auto& line : lines[f]) {
      const double norm = line.at("compressor_grad_norm").get<double>();
      EXPECT_TRUE(std::isfinite(norm) && norm > 0.0) << norm;
    }
  }
}

TEST(XLTrainer, TooSmallASplitForTheLanesIsAValueError) {
  TempDir dir;
  TrainConfig c = run_config(dir, "small");
  c.batch_size = 64;
  data::Corpus corpus = data::Corpus::from_text(text().substr(0, 900));
  EXPECT_NE(testing::error_of<ValueError>([&] { Trainer t(tiny_xl(), c, corpus); }).find("lanes of segments"),
            std::string::npos);
}

TEST(XLEvaluate, ScoresEveryLaneTargetInOrderWithTheMemoryCarried) {
  rng::manual_seed(2);
  models::LanguageModel model(tiny_xl());
  data::Corpus corpus = data::Corpus::from_text(text());
  data::TokenSource valid(corpus, data::Split::Valid);
  EvalResult all = evaluate_with_memory(model, valid, 0, 4);
  data::LaneSegments segments(valid, 16, 4);
  EXPECT_EQ(all.targets, segments.num_targets());
  EXPECT_EQ(all.batches, segments.num_segments());
  // By hand: the same segments in order with a memory of 12.
  model.eval();
  autograd::NoGradGuard no_grad;
  models::SegmentMemory memory = model.start_memory();
  double sum = 0;
  for (int64_t i = 0; i < segments.num_segments(); ++i) {
    data::Batch b = segments.segment(i);
    sum += double(model.loss(b.inputs, b.targets, memory, Reduction::Sum).item());
  }
  EXPECT_NEAR(all.loss, sum / double(segments.num_targets()), 1e-9);
  EvalResult longer = evaluate_with_memory(model, valid, 0, 4, 0, 48);
  EXPECT_TRUE(std::isfinite(longer.bits_per_char));
  EXPECT_NE(longer.loss, all.loss);
  EvalResult prefix = evaluate_with_memory(model, valid, 0, 4, 2);
  EXPECT_EQ(prefix.targets, 2 * 4 * 16);
}

}  // namespace
}  // namespace eformer::train
