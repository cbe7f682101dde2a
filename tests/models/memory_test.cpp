// Models with a recurrent memory (Transformer-XL): the relative shift, segments with a memory equal
// one longer pass where the math says so, no gradient reaches a memory, streaming equals the
// segment-by-segment pass, and the config's validation. Parity of the relative attention with a
// float64 PyTorch formulation of the paper's equations: tests/python/test_memory.py.
#include <gtest/gtest.h>

#include <cmath>

#include "eformer/attention/relative_usage.h"
#include "eformer/eformer.h"
#include "eformer/models/compressor.h"
#include "eformer/train/memory.h"

#include "../test_util.h"

namespace eformer::models {
namespace {

using testing::error_of;

ModelConfig xl(nlohmann::json overrides = nlohmann::json::object()) {
  nlohmann::json j = {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 3}, {"d_ff", 32},
                      {"max_len", 8},     {"dropout", 0.0}, {"memory", {{"kind", "xl"}, {"mem_len", 8}}}};
  j.update(overrides);
  return parse_model_config(j);
}

Tensor ids_of(int64_t B, int64_t N, uint64_t seed) {
  std::vector<int64_t> v(size_t(B * N));
  uint64_t s = seed;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = int64_t((s >> 33) % 64);
  }
  return Tensor::from_vector(v, {B, N});
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = testing::values(a), y = testing::values(b);
  EXPECT_EQ(x.size(), y.size());
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

TEST(RelativeShift, MovesRowIByNMinus1MinusIAndMasksTheFuture) {
  testing::Seed seed;
  rng::Generator gen(seed.value);
  const int64_t N = 3, K = 5;
  Tensor x = testing::leaf(testing::normal({2, N, K}, gen));
  Tensor y = relative_shift(x);
  auto xv = testing::values(x), yv = testing::values(y);
  for (int64_t o = 0; o < 2; ++o)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < K; ++j) {
        const float got = yv[size_t((o * N + i) * K + j)];
        if (j <= K - N + i) EXPECT_EQ(got, xv[size_t((o * N + i) * K + j + N - 1 - i)]);
        else EXPECT_TRUE(std::isinf(got) && got < 0);
      }
  // Gradient: the upstream value of (i, j) lands on (i, j + N - 1 - i); nothing on unused distances.
  Tensor g = testing::normal({2, N, K}, gen);
  backward(y, g);
  auto gv = testing::values(g), dx = testing::values(eformer::grad(x));
  for (int64_t o = 0; o < 2; ++o)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t p = 0; p < K; ++p) {
        const int64_t j = p - (N - 1 - i);
        const float want = j >= 0 && j <= K - N + i ? gv[size_t((o * N + i) * K + j)] : 0.0f;
        EXPECT_EQ(dx[size_t((o * N + i) * K + p)], want) << seed.str();
      }
  EXPECT_THROW(relative_shift(Tensor::zeros({4, 3})), ShapeError);
}

// Rows of the second segment, given the first as memory, equal the same rows of one pass over both:
// each layer's memory is exactly the first segment's states that the one pass computes, because the
// first segment's rows never see the second (causal), and the relative scores depend only on i - j.
TEST(XLMemory, ASegmentWithMemoryEqualsOnePassOverBoth) {
  rng::manual_seed(3);
  ModelConfig c = xl({{"max_len", 16}});
  LanguageModel model(c);
  model.eval();
  autograd::NoGradGuard no_grad;
  Tensor ids = ids_of(2, 16, 5);
  Tensor whole = model.forward(ids);  // one segment of 16, no memory
  SegmentMemory memory = model.start_memory(8);
  Tensor first = model.forward(narrow(ids, 1, 0, 8), memory);
  EXPECT_EQ(memory.length(), 8);
  Tensor second = model.forward(narrow(ids, 1, 8, 8), memory);
  EXPECT_LT(max_abs_diff(first, narrow(whole, 1, 0, 8)), 1e-5f);
  EXPECT_LT(max_abs_diff(second, narrow(whole, 1, 8, 8)), 2e-5f);
  // A memory shorter than the segment before it is a truncated context: the rows differ.
  SegmentMemory short_memory = model.start_memory(3);
  model.forward(narrow(ids, 1, 0, 8), short_memory);
  EXPECT_EQ(short_memory.length(), 3);
  EXPECT_GT(max_abs_diff(model.forward(narrow(ids, 1, 8, 8), short_memory), second), 1e-4f);
}

TEST(XLMemory, NoGradientFlowsIntoTheMemory) {
  rng::manual_seed(4);
  LanguageModel model(xl());
  SegmentMemory memory = model.start_memory();
  {
    autograd::NoGradGuard no_grad;
    model.forward(ids_of(2, 8, 1), memory);
  }
  for (Tensor& m : memory.layers) m = testing::leaf(m);  // would receive a gradient if one flowed
  Tensor loss = model.loss(ids_of(2, 8, 2), ids_of(2, 8, 3), memory);
  backward(loss);
  for (const Tensor& m : memory.layers) EXPECT_TRUE(!m.defined() || !eformer::grad(m).defined());
  int64_t with_grad = 0;
  for (const Tensor& p : model.parameters()) with_grad += eformer::grad(p).defined() ? 1 : 0;
  EXPECT_EQ(with_grad, int64_t(model.parameters().size()));
  // The new memory is detached too.
  for (const Tensor& m : memory.layers) EXPECT_FALSE(eformer::requires_grad(m));
}

TEST(XLMemory, StreamingEqualsTheSegmentBySegmentPass) {
  rng::manual_seed(6);
  LanguageModel model(xl({{"memory", {{"kind", "xl"}, {"mem_len", 5}}}}));
  model.eval();
  autograd::NoGradGuard no_grad;
  const int64_t T = 8 * 3 + 3;  // three segments and part of a fourth
  Tensor ids = ids_of(2, T, 9);
  SegmentMemory memory = model.start_memory();
  std::vector<Tensor> parallel;
  for (int64_t t = 0; t < T; t += 8) parallel.push_back(model.forward(narrow(ids, 1, t, std::min<int64_t>(8, T - t)), memory));
  Tensor expected = cat(parallel, 1);
  // Token by token, and in uneven chunks that cross segment boundaries.
  for (std::vector<int64_t> chunks : {std::vector<int64_t>(size_t(T), 1), std::vector<int64_t>{3, 7, 1, 10, 6}}) {
    DecodeState state = model.start_decoding(2);
    std::vector<Tensor> out;
    int64_t t = 0;
    for (int64_t len : chunks) {
      out.push_back(model.step(state, narrow(ids, 1, t, len)));
      t += len;
    }
    ASSERT_EQ(t, T);
    EXPECT_LT(max_abs_diff(cat(out, 1), expected), 2e-5f);
    EXPECT_EQ(state.memory.length(), 5);
  }
  EXPECT_NE(model.streaming_summary().find("native"), std::string::npos);
}

TEST(XLMemory, EvaluationMemoryMayBeLongerThanInTraining) {
  rng::manual_seed(7);
  LanguageModel model(xl());
  model.eval();
  autograd::NoGradGuard no_grad;
  SegmentMemory longer = model.start_memory(32);
  for (int i = 0; i < 5; ++i) model.forward(ids_of(1, 8, uint64_t(i)), longer);
  EXPECT_EQ(longer.length(), 32);
  Tensor logits = model.forward(ids_of(1, 8, 9), longer);
  for (float v : testing::values(logits)) ASSERT_TRUE(std::isfinite(v));
}

TEST(XLMemory, RecomputePolicyMatchesPlainWithGradients) {
  for (const char* policy : {"plain", "recompute"}) {
    SCOPED_TRACE(policy);
    rng::manual_seed(8);
    LanguageModel model(xl({{"block", policy}, {"dropout", 0.1}}));
    SegmentMemory memory = model.start_memory();
    model.loss(ids_of(2, 8, 1), ids_of(2, 8, 2), memory);
    rng::manual_seed(100);
    Tensor loss = model.loss(ids_of(2, 8, 3), ids_of(2, 8, 4), memory);
    backward(loss);
    static std::vector<float> plain_loss, plain_grad;
    if (std::string(policy) == "plain") {
      plain_loss = testing::values(loss);
      plain_grad = testing::values(eformer::grad(model.parameters()[3]));
    } else {
      EXPECT_EQ(testing::values(loss), plain_loss);
      EXPECT_EQ(testing::values(eformer::grad(model.parameters()[3])), plain_grad);
    }
  }
}

TEST(XLMemory, ConfigIsValidatedAndRoundTrips) {
  ModelConfig c = xl();
  EXPECT_EQ(c.positions, "relative");
  nlohmann::json j = to_json(c);
  EXPECT_EQ(to_json(parse_model_config(j)), j);
  EXPECT_EQ(parse_model_config(j).memory, c.memory);
  auto bad = [](nlohmann::json o) { return error_of<ValueError>([&] { xl(o); }); };
  EXPECT_NE(bad({{"memory", {{"kind", "xl"}, {"mem_len", 0}}}}).find("mem_len"), std::string::npos);
  EXPECT_NE(bad({{"memory", {{"kind", "lstm"}, {"mem_len", 4}}}}).find("memory.kind"), std::string::npos);
  EXPECT_NE(bad({{"memory", {{"kind", "xl"}, {"mem_len", 4}, {"size", 3}}}}).find("unknown key 'memory.size'"),
            std::string::npos);
  EXPECT_NE(bad({{"positions", "learned"}}).find("positions 'relative'"), std::string::npos);
  EXPECT_NE(bad({{"attention", "performer"}}).find("brings its own relative attention"), std::string::npos);
  EXPECT_NE(bad({{"block", "reversible"}}).find("reversible"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { parse_model_config({{"positions", "relative"}}); }).find("needs a memory"),
            std::string::npos);
  LanguageModel plain(parse_model_config({{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 16}}));
  EXPECT_THROW(plain.start_memory(), ValueError);
  LanguageModel model(c);
  SegmentMemory memory = model.start_memory();
  EXPECT_THROW(model.forward(ids_of(1, 9, 0), memory), ValueError);  // longer than a segment
  model.forward(ids_of(2, 8, 0), memory);
  EXPECT_THROW(model.forward(ids_of(3, 8, 0), memory), ShapeError);  // another batch
}

// ---- the Compressive Transformer -------------------------------------------------------------

ModelConfig compressive(const std::string& f = "conv") {
  return xl({{"memory",
              {{"kind", "compressive"}, {"mem_len", 8}, {"cmem_len", 6}, {"compression_rate", 2}, {"compression", f}}}});
}

TEST(Compressor, PoolsAndConvolvesWindowsOfTheRate) {
  testing::Seed seed;
  rng::Generator gen(seed.value);
  Tensor x = testing::normal({2, 6, 4}, gen);  // windows of 3: rows 0-2 and 3-5
  auto xv = testing::values(x);
  auto at = [&](int64_t b, int64_t t, int64_t c) { return xv[size_t((b * 6 + t) * 4 + c)]; };
  auto mx = testing::values(Compressor("max_pool", 4, 3).forward(x));
  auto mn = testing::values(Compressor("mean_pool", 4, 3).forward(x));
  Compressor conv("conv", 4, 3);
  auto cv = testing::values(conv.forward(x));
  auto W = testing::values(conv.parameters()[0]), bias = testing::values(conv.parameters()[1]);  // [4, 12], [4]
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t w = 0; w < 2; ++w)
      for (int64_t c = 0; c < 4; ++c) {
        const size_t o = size_t((b * 2 + w) * 4 + c);
        EXPECT_EQ(mx[o], std::max({at(b, 3 * w, c), at(b, 3 * w + 1, c), at(b, 3 * w + 2, c)}));
        EXPECT_NEAR(mn[o], (at(b, 3 * w, c) + at(b, 3 * w + 1, c) + at(b, 3 * w + 2, c)) / 3, 1e-6);
        double want = bias[size_t(c)];
        for (int64_t k = 0; k < 3; ++k)
          for (int64_t e = 0; e < 4; ++e) want += W[size_t(c * 12 + k * 4 + e)] * at(b, 3 * w + k, e);
        EXPECT_NEAR(cv[o], want, 1e-5) << seed.str();
      }
  EXPECT_THROW(Compressor("max_pool", 4, 4).forward(x), ShapeError);  // 6 is not a multiple of 4
  EXPECT_THROW(Compressor("dilated_conv", 4, 4).forward(x), ShapeError);
  EXPECT_NE(error_of<ValueError>([] { Compressor("median", 4, 3); }).find("dilated_conv or most_used"),
            std::string::npos);
}

TEST(Compressor, DilatedConvReadsTapsSpacedByTheNumberOfOutputs) {
  testing::Seed seed;
  rng::Generator gen(seed.value);
  const int64_t n = 12, c = 3, m = n / c, D = 4;  // kernel c = 3, dilation m = 4: output t reads t, t+4, t+8
  Tensor x = testing::normal({2, n, D}, gen);
  auto xv = testing::values(x);
  Compressor f("dilated_conv", D, c);
  auto out = testing::values(f.forward(x));
  auto W = testing::values(f.parameters()[0]), bias = testing::values(f.parameters()[1]);  // [D, c D], [D]
  ASSERT_EQ(out.size(), size_t(2 * m * D));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < m; ++t)
      for (int64_t o = 0; o < D; ++o) {
        double want = bias[size_t(o)];
        for (int64_t j = 0; j < c; ++j)
          for (int64_t e = 0; e < D; ++e)
            want += W[size_t(o * c * D + j * D + e)] * xv[size_t((b * n + t + j * m) * D + e)];
        EXPECT_NEAR(out[size_t((b * m + t) * D + o)], want, 1e-5) << seed.str();
      }
}

TEST(Compressor, MostUsedKeepsTheMostAttendedInPositionOrderTiesToTheOlder) {
  Tensor x = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15}, {2, 6, 1});
  // Row 0: three memories tie at 0.3 (1, 2, 4); row 1: all tie.
  Tensor usage = Tensor::from_vector(std::vector<float>{0.1f, 0.3f, 0.3f, 0.2f, 0.3f, 0.0f, 1, 1, 1, 1, 1, 1}, {2, 6});
  EXPECT_EQ(testing::values(Compressor("most_used", 1, 2).forward(x, usage)),
            (std::vector<float>{1, 2, 4, 10, 11, 12}));
  EXPECT_EQ(testing::values(Compressor("most_used", 1, 3).forward(x, usage)),
            (std::vector<float>{1, 2, 10, 11}));  // 4 loses the tie to the older 1 and 2
  Tensor reverse = Tensor::from_vector(std::vector<float>{6, 5, 4, 3, 2, 1, 1, 2, 3, 4, 5, 6}, {2, 6});
  EXPECT_EQ(testing::values(Compressor("most_used", 1, 3).forward(x, reverse)),
            (std::vector<float>{0, 1, 14, 15}));  // position order, not usage order
  Compressor f("most_used", 1, 2);
  EXPECT_TRUE(f.parameters().empty());
  EXPECT_NE(error_of<ValueError>([&] { f.forward(x); }).find("usage"), std::string::npos);
  EXPECT_NE(error_of<ValueError>([&] { f.forward(x, Tensor::zeros({2, 5})); }).find("[2, 6]"), std::string::npos);
}

TEST(RelativeUsage, IsTheAttentionEachKeyReceivedAveragedOverHeadsAndQueries) {
  testing::Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  attention::RelativeAttention attn(8, 2, 0.0f);
  const int64_t B = 2, N = 3, M = 4;
  Tensor x = testing::normal({B, N, 8}, gen), memory = testing::normal({B, M, 8}, gen);
  auto u = testing::values(attention::relative_usage(attn, x, memory));
  ASSERT_EQ(u.size(), size_t(B * (M + N)));
  for (int64_t b = 0; b < B; ++b) {
    double total = 0;
    for (int64_t j = 0; j < M + N; ++j) total += u[size_t(b * (M + N) + j)];
    EXPECT_NEAR(total, 1.0, 1e-5) << seed.str();  // each query's probabilities sum to 1
    // The last key is seen by the last query only: at most 1 / N of the usage.
    EXPECT_LE(u[size_t(b * (M + N) + M + N - 1)], 1.0 / N + 1e-6);
  }
  // Without a memory: the first key is seen by every query, the causal mask keeps the rest smaller on average.
  auto alone = testing::values(attention::relative_usage(attn, x, Tensor()));
  EXPECT_EQ(alone.size(), size_t(B * N));
  EXPECT_NEAR(alone[0] + alone[1] + alone[2], 1.0, 1e-5);
  EXPECT_THROW(attention::relative_usage(attn, testing::normal({B, N, 6}, gen), memory), ShapeError);
}

TEST(CompressiveMemory, EvictedMemoriesAreCompressedAndOnlyTheCompressorLearnsFromReconstruction) {
  rng::manual_seed(11);
  LanguageModel model(compressive());
  SegmentMemory memory = model.start_memory();
  model.loss(ids_of(2, 8, 1), ids_of(2, 8, 2), memory);  // fills the memory, evicts nothing
  EXPECT_EQ(memory.length(), 8);
  EXPECT_EQ(memory.compressed_length(), 0);
  EXPECT_FALSE(memory.reconstruction.defined());
  Tensor loss = model.loss(ids_of(2, 8, 3), ids_of(2, 8, 4), memory);  // evicts 8 -> 4 compressed
  EXPECT_EQ(memory.compressed_length(), 4);
  ASSERT_TRUE(memory.reconstruction.defined());
  EXPECT_GT(memory.reconstruction.item(), 0.0f);
  backward(memory.reconstruction);
  for (const auto& [name, p] : model.named_parameters())
    EXPECT_EQ(eformer::grad(p).defined(), name.starts_with("compressors.")) << name;
  model.loss(ids_of(2, 8, 5), ids_of(2, 8, 6), memory);
  EXPECT_EQ(memory.compressed_length(), 6);  // 4 + 4, the last cmem_len = 6 kept
  EXPECT_FALSE(eformer::requires_grad(memory.compressed[0]));
  // The compressed memory is attended: dropping it changes the next segment's output.
  model.eval();
  autograd::NoGradGuard no_grad;
  SegmentMemory without = memory;
  without.compressed.clear();
  EXPECT_GT(max_abs_diff(model.forward(ids_of(2, 8, 7), memory), model.forward(ids_of(2, 8, 7), without)), 1e-5f);
}

TEST(CompressiveMemory, StreamingEqualsTheSegmentBySegmentPass) {
  for (const char* f : {"max_pool", "mean_pool", "conv", "dilated_conv", "most_used"}) {
    SCOPED_TRACE(f);
    rng::manual_seed(12);
    LanguageModel model(compressive(f));
    model.eval();
    autograd::NoGradGuard no_grad;
    const int64_t T = 8 * 5 + 2;
    Tensor ids = ids_of(1, T, 13);
    SegmentMemory memory = model.start_memory();
    std::vector<Tensor> parallel;
    for (int64_t t = 0; t < T; t += 8)
      parallel.push_back(model.forward(narrow(ids, 1, t, std::min<int64_t>(8, T - t)), memory));
    DecodeState state = model.start_decoding(1);
    std::vector<Tensor> out;
    for (int64_t t = 0; t < T; ++t) out.push_back(model.step(state, narrow(ids, 1, t, 1)));
    EXPECT_LT(max_abs_diff(cat(out, 1), cat(parallel, 1)), 2e-5f);
    EXPECT_EQ(state.memory.compressed_length(), 6);
  }
}

TEST(CompressiveMemory, AShortLastSegmentDropsTheOldestRemainderOfTheRate) {
  // Segments of 8, 8, 3 with mem_len 8 and rate 2: the third evicts 3 memories, of which the newest
  // 2 (one window) are compressed into one slot and the oldest is dropped.
  for (const char* f : {"max_pool", "mean_pool", "conv", "dilated_conv", "most_used"}) {
    SCOPED_TRACE(f);
    rng::manual_seed(13);
    LanguageModel model(compressive(f));
    model.eval();
    autograd::NoGradGuard no_grad;
    SegmentMemory memory = model.start_memory();
    model.forward(ids_of(1, 8, 1), memory);
    model.forward(ids_of(1, 8, 2), memory);
    ASSERT_EQ(memory.compressed_length(), 4);
    const Tensor before = memory.layers[1];  // rows 0-2 are evicted next; rows 1, 2 are compressed
    model.forward(ids_of(1, 3, 3), memory);
    EXPECT_EQ(memory.compressed_length(), 5);
    EXPECT_EQ(memory.length(), 8);
    const auto slot = testing::values(narrow(memory.compressed[1], 1, 4, 1));
    const auto compressor = std::static_pointer_cast<Compressor>(model.child("compressors")->child("1"));
    const Tensor window = contiguous(narrow(before, 1, 1, 2));
    if (std::string(f) == "most_used") {  // one of the two rows of the window, never the dropped row 0
      EXPECT_TRUE(slot == testing::values(narrow(before, 1, 1, 1)) || slot == testing::values(narrow(before, 1, 2, 1)));
    } else {
      EXPECT_EQ(slot, testing::values(compressor->forward(window)));
    }
  }
}

TEST(CompressiveMemory, MostUsedHasNoParametersAndItsReconstructionLossTrainsNothing) {
  rng::manual_seed(14);
  LanguageModel model(compressive("most_used"));
  for (const auto& [name, p] : model.named_parameters()) EXPECT_FALSE(name.starts_with("compressors.")) << name;
  SegmentMemory memory = model.start_memory();
  model.loss(ids_of(2, 8, 1), ids_of(2, 8, 2), memory);
  model.loss(ids_of(2, 8, 3), ids_of(2, 8, 4), memory);
  ASSERT_TRUE(memory.reconstruction.defined());  // logged as a measure of the compression, not trained on
  EXPECT_GT(memory.reconstruction.item(), 0.0f);
  EXPECT_FALSE(eformer::requires_grad(memory.reconstruction));
}

TEST(CompressiveMemory, ConfigIsValidated) {
  EXPECT_NO_THROW(compressive("max_pool"));
  nlohmann::json j = to_json(compressive());
  EXPECT_EQ(to_json(parse_model_config(j)), j);
  for (const char* f : {"max_pool", "mean_pool", "conv", "dilated_conv", "most_used"}) {
    nlohmann::json named = to_json(compressive(f));
    EXPECT_EQ(to_json(parse_model_config(named)), named);
    // `eformer info`'s estimate counts the compressors' parameters (conv and dilated_conv only).
    EXPECT_EQ(train::estimate_memory(compressive(f), 1, false).parameters, LanguageModel(compressive(f)).num_parameters())
        << f;
  }
  EXPECT_NE(error_of<ValueError>([] { compressive("dilated"); }).find("memory.compression = 'dilated'; expected one of"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] {
              xl({{"memory", {{"kind", "compressive"}, {"mem_len", 8}, {"cmem_len", 4}, {"compression_rate", 3}}}});
            }).find("must divide"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { xl({{"memory", {{"kind", "compressive"}, {"mem_len", 8}}}}); }).find("cmem_len"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { xl({{"memory", {{"kind", "xl"}, {"mem_len", 8}, {"cmem_len", 2}}}}); })
                .find("for memory.kind 'compressive'"),
            std::string::npos);
}

}  // namespace
}  // namespace eformer::models
