// The registry-driven contract suite: every registered mechanism, for each capability its entry
// declares, without a line written for it here:
//   - it declares a float64 reference the suites know; a "softmax-pattern" one is checked here
//     (forward and q/k/v gradients of its functional form against a float64 dense softmax over its
//     exact pattern), the others in tests/python/test_contract.py against PyTorch float64;
//   - causal: no leak (future inputs change neither past outputs nor, through them, any gradient);
//   - streaming: step() in pieces equals the parallel causal pass (native or fallback);
//   - padding: masked keys change nothing at the real queries;
//   - identical bits on 1 and 2 threads (forward and every gradient, dropout on where it exists);
//   - dropout replayed bit for bit under autograd::checkpoint (the recompute block policy);
//   - a checkpoint round trip (save, load into a differently initialised twin) gives the same output;
//   - bad options are rejected with a message naming them.
// Below the suite: the capability errors, each raised with a sentence naming the layer, by
// throwaway mechanisms registered for the test only.
//
// Inputs are drawn from a fresh seed each run ("[ seed ]"); EFORMER_TEST_SEED=<n> replays one.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_near_all;
using testing::normal;
using testing::leaf;
using testing::values;
using testing::expect_error;
using testing::Seed;
using testing::TempDir;

constexpr int64_t B = 2, N = 11, D = 32, H = 4, kMaxLen = 64;

// Key mask [B, M]: batch 0 all real, batch 1 with every third key padded (key 0 stays real).
Tensor padding(int64_t M) {
  Tensor m = Tensor::zeros({B, M}, DType::Bool);
  bool* p = m.data<bool>();
  for (int64_t j = 0; j < M; ++j) p[j] = true, p[M + j] = j % 3 != 2;
  return m;
}

MechanismConfig config_for(const std::string& name, bool causal, bool cross = false) {
  MechanismConfig c;
  c.d_model = D;
  c.n_heads = H;
  c.causal = causal;
  c.cross = cross;
  c.max_len = kMaxLen;
  c.positions = "rotary";  // exercised where a mechanism uses it (offsets in streaming)
  (void)name;
  return c;
}

class Contract : public ::testing::TestWithParam<std::string> {
 protected:
  const MechanismEntry& entry() const { return find_mechanism(GetParam()); }
  const Capabilities& caps() const { return entry().capabilities; }
  // The self-attention forms the mechanism has.
  std::vector<bool> causal_modes() const {
    std::vector<bool> modes;
    if (caps().bidirectional) modes.push_back(false);
    if (caps().causal) modes.push_back(true);
    return modes;
  }
};

// ---- reference ----

TEST_P(Contract, DeclaresAReferenceTheSuitesKnow) {
  const MechanismEntry& e = entry();
  EXPECT_TRUE(e.reference == "softmax-pattern" || e.reference == "kernelized" || e.reference == "aft" ||
              e.reference == "lsh" || e.reference == "routing" || e.reference == "linformer" ||
              e.reference == "synthesizer" || e.reference == "memory_compressed" || e.reference == "sinkhorn" ||
              e.reference == "etc" || e.reference == "isab")
      << e.name << " declares reference '" << e.reference
      << "', which neither this suite nor tests/python/references.py implements: add its float64 formulation";
  if (e.reference == "softmax-pattern") {
    EXPECT_TRUE(bool(e.pattern)) << e.name << ": the softmax-pattern reference needs the exact pattern";
    EXPECT_TRUE(bool(e.functional)) << e.name << ": the softmax-pattern reference checks the functional form";
  }
  EXPECT_FALSE(e.description.empty());
}

// Float64 softmax attention restricted to `allowed` [B?, H, N, M]: forward and the gradients of
// sum(out * g). A row with no allowed key gives 0.
struct DenseReference {
  std::vector<double> out, dq, dk, dv;
};
DenseReference dense_softmax(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, const std::vector<float>& g,
                             const std::vector<bool>& allowed, int64_t Hh, int64_t Nq, int64_t M, int64_t d,
                             double scale) {
  DenseReference r;
  r.out.assign(B * Hh * Nq * d, 0), r.dq.assign(B * Hh * Nq * d, 0), r.dk.assign(B * Hh * M * d, 0),
      r.dv.assign(B * Hh * M * d, 0);
  std::vector<double> p(M), dp(M);
  for (int64_t bh = 0; bh < B * Hh; ++bh)
    for (int64_t i = 0; i < Nq; ++i) {
      const float* qi = &q[(bh * Nq + i) * d];
      double mx = -INFINITY;
      for (int64_t j = 0; j < M; ++j) {
        p[j] = -INFINITY;
        if (!allowed[(bh * Nq + i) * M + j]) continue;
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += double(qi[c]) * k[(bh * M + j) * d + c];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0;
      for (int64_t j = 0; j < M; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx));
      for (int64_t j = 0; j < M; ++j) p[j] /= sum;
      const float* gi = &g[(bh * Nq + i) * d];
      double dot = 0;  // sum_j p_j dp_j
      for (int64_t j = 0; j < M; ++j) {
        dp[j] = 0;
        for (int64_t c = 0; c < d; ++c) {
          r.out[(bh * Nq + i) * d + c] += p[j] * v[(bh * M + j) * d + c];
          dp[j] += double(gi[c]) * v[(bh * M + j) * d + c];
          r.dv[(bh * M + j) * d + c] += p[j] * gi[c];
        }
        dot += p[j] * dp[j];
      }
      for (int64_t j = 0; j < M; ++j) {
        const double ds = p[j] * (dp[j] - dot) * scale;
        for (int64_t c = 0; c < d; ++c) {
          r.dq[(bh * Nq + i) * d + c] += ds * k[(bh * M + j) * d + c];
          r.dk[(bh * M + j) * d + c] += ds * qi[c];
        }
      }
    }
  return r;
}

TEST_P(Contract, FunctionalFormMatchesTheFloat64PatternReference) {
  const MechanismEntry& e = entry();
  if (e.reference != "softmax-pattern")
    GTEST_SKIP() << e.name << ": reference '" << e.reference
                 << "' is checked in tests/python/test_contract.py";
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t d = 8;
  for (bool causal : causal_modes())
    for (int64_t M : causal ? std::vector<int64_t>{N} : std::vector<int64_t>{N, 7})
      for (bool masked : {false, true}) {
        if (masked && !caps().padding_mask) continue;
        SCOPED_TRACE(seed.str() + (causal ? " causal" : " bidirectional") + " M=" + std::to_string(M) +
                     (masked ? " masked" : ""));
        Tensor q = leaf(normal({B, H, N, d}, gen)), k = leaf(normal({B, H, M, d}, gen)),
               v = leaf(normal({B, H, M, d}, gen)), g = normal({B, H, N, d}, gen);
        AttentionOptions opts;
        opts.causal = causal;
        if (masked) opts.key_mask = padding(M);
        Tensor out = e.functional(q, k, v, opts, {});
        backward(out, g);
        Tensor pattern = e.pattern(N, M, H, causal, {}, 0);
        ASSERT_EQ(pattern.shape(), (Shape{H, N, M}));
        std::vector<bool> allowed(B * H * N * M);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t hij = 0; hij < H * N * M; ++hij)
            allowed[b * H * N * M + hij] =
                pattern.data<bool>()[hij] && (!masked || opts.key_mask.data<bool>()[b * M + hij % M]);
        DenseReference r = dense_softmax(values(q), values(k), values(v), values(g), allowed, H, N, M, d,
                                         1.0 / std::sqrt(double(d)));
        expect_near_all(values(out), r.out, 1e-5, "forward");
        expect_near_all(values(grad(q)), r.dq, 1e-4, "grad q");
        expect_near_all(values(grad(k)), r.dk, 1e-4, "grad k");
        expect_near_all(values(grad(v)), r.dv, 1e-4, "grad v");
      }
}

// ---- causal ----

TEST_P(Contract, NoCausalLeak) {
  if (!caps().causal) GTEST_SKIP() << "no causal form";
  Seed seed;
  rng::Generator gen(seed.value);
  rng::manual_seed(seed.value);
  auto mech = make_mechanism(GetParam(), config_for(GetParam(), true));
  mech->eval();
  Tensor x = normal({B, N, D}, gen);
  const std::vector<float> base = values(mech->forward(x));
  for (int64_t t : {int64_t(0), N / 2, N - 2}) {
    SCOPED_TRACE(seed.str() + " t=" + std::to_string(t));
    // Change every input after t: outputs up to t stay identical, bit for bit.
    Tensor changed = x.clone_data();
    float* cp = changed.data<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = t + 1; i < N; ++i)
        for (int64_t c = 0; c < D; ++c) cp[(b * N + i) * D + c] = 10.0f * cp[(b * N + i) * D + c] + 3.0f;
    Tensor xl = leaf(changed);
    Tensor y = mech->forward(xl);
    const std::vector<float> yv = values(y);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i <= t; ++i)
        for (int64_t c = 0; c < D; ++c)
          ASSERT_EQ(yv[(b * N + i) * D + c], base[(b * N + i) * D + c]) << "output row " << i << " changed";
    // The gradient of the outputs up to t reaches no input after t.
    Tensor g = Tensor::zeros({B, N, D});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i <= t; ++i)
        for (int64_t c = 0; c < D; ++c) g.data<float>()[(b * N + i) * D + c] = 1.0f + float(c % 3);
    backward(y, g);
    const std::vector<float> gx = values(grad(xl));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = t + 1; i < N; ++i)
        for (int64_t c = 0; c < D; ++c)
          ASSERT_EQ(gx[(b * N + i) * D + c], 0.0f) << "gradient leaks to row " << i;
  }
}

TEST_P(Contract, StreamingStepEqualsTheParallelCausalPass) {
  if (!caps().causal) GTEST_SKIP() << "no causal form";
  Seed seed;
  rng::Generator gen(seed.value);
  auto mech = make_mechanism(GetParam(), config_for(GetParam(), true));
  mech->eval();
  EXPECT_EQ(mech->streaming_path() == "native", caps().recurrent);
  Tensor x = normal({B, N, D}, gen);
  const std::vector<float> full = values(mech->forward(x));
  for (const std::vector<int64_t>& pieces :
       {std::vector<int64_t>{1, 1, 1, 8}, std::vector<int64_t>{3, 5, 2, 1}}) {
    auto state = mech->start(B);
    int64_t at = 0;
    for (int64_t n : pieces) {
      const std::vector<float> out = values(mech->step(contiguous(slice(x, 1, at, at + n)), *state));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < D; ++c)
            ASSERT_NEAR(out[(b * n + i) * D + c], full[(b * N + at + i) * D + c], 2e-5)
                << seed.str() << ": step row " << at + i;
      at += n;
    }
    EXPECT_EQ(state->length(), N);
  }
  // A state belongs to the mechanism that made it.
  auto other = make_mechanism(GetParam(), config_for(GetParam(), true));
  auto state = mech->start(B);
  expect_error<ValueError>([&] { other->step(contiguous(slice(x, 1, 0, 1)), *state); }, {"not made by"});
}

// ---- padding ----

TEST_P(Contract, PaddedKeysChangeNothingAtRealQueries) {
  if (!caps().padding_mask) GTEST_SKIP() << "declares no padding mask";
  Seed seed;
  rng::Generator gen(seed.value);
  struct Mode {
    bool causal, cross;
  };
  std::vector<Mode> modes;
  for (bool causal : causal_modes()) modes.push_back({causal, false});
  if (caps().cross) modes.push_back({false, true});
  for (const Mode& mode : modes) {
    SCOPED_TRACE(seed.str() + (mode.cross ? " cross" : mode.causal ? " causal" : " bidirectional"));
    auto mech = make_mechanism(GetParam(), config_for(GetParam(), mode.causal, mode.cross));
    mech->eval();
    const int64_t M = mode.cross ? 7 : N;
    Tensor x = normal({B, N, D}, gen), memory = mode.cross ? normal({B, M, D}, gen) : Tensor();
    Tensor mask = padding(M);
    const std::vector<float> base = values(mech->forward(x, memory, mask));
    // Change the padded keys' inputs (of the memory, or of x).
    Tensor& keys = mode.cross ? memory : x;
    float* kp = keys.data<float>();
    for (int64_t j = 0; j < M; ++j)
      if (!mask.data<bool>()[M + j])
        for (int64_t c = 0; c < D; ++c) kp[(M + j) * D + c] = 5.0f - 2.0f * kp[(M + j) * D + c];
    const std::vector<float> after = values(mech->forward(x, memory, mask));
    for (int64_t i = 0; i < N; ++i) {
      if (!mode.cross && !mask.data<bool>()[N + i]) continue;  // a padded query may change
      for (int64_t c = 0; c < D; ++c)
        ASSERT_NEAR(after[(N + i) * D + c], base[(N + i) * D + c], 1e-5) << "row " << i;
    }
  }
}

// ---- determinism, recomputation, checkpoints ----

// Forward and backward in training mode (attention dropout on where it exists): output, input
// gradient and every parameter gradient.
std::vector<std::vector<float>> train_pass(Mechanism& mech, const Tensor& x, uint64_t seed, bool recompute) {
  rng::manual_seed(seed);
  mech.zero_grad();
  Tensor xl = leaf(x.clone_data());
  auto fn = [&](const std::vector<Tensor>& in) { return mech.forward(in[0]); };
  Tensor y = recompute ? autograd::checkpoint(fn, {xl}) : fn({xl});
  Tensor g = Tensor::empty(y.shape());
  rng::Generator up(seed + 1);
  rng::normal_(g.data<float>(), g.numel(), up);
  backward(y, g);
  std::vector<std::vector<float>> out{values(y), values(grad(xl))};
  for (const auto& [name, p] : mech.named_parameters()) {
    EXPECT_TRUE(grad(p).defined()) << "no gradient reaches " << name;
    if (grad(p).defined()) out.push_back(values(grad(p)));
  }
  return out;
}

MechanismConfig training_config(const std::string& name, bool causal) {
  MechanismConfig c = config_for(name, causal);
  if (find_mechanism(name).capabilities.dropout) c.dropout = 0.25f;
  return c;
}

TEST_P(Contract, IdenticalBitsOnOneAndTwoThreads) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int before = parallel::num_threads();
  for (bool causal : causal_modes()) {
    rng::manual_seed(seed.value);
    auto mech = make_mechanism(GetParam(), training_config(GetParam(), causal));
    mech->train();
    Tensor x = normal({B, 37, D}, gen);
    parallel::set_num_threads(1);
    auto one = train_pass(*mech, x, seed.value, false);
    parallel::set_num_threads(2);
    auto two = train_pass(*mech, x, seed.value, false);
    parallel::set_num_threads(before);
    ASSERT_EQ(one.size(), two.size());
    for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << ": tensor " << i;
  }
}

TEST_P(Contract, RecomputationReplaysEveryDrawBitForBit) {
  Seed seed;
  rng::Generator gen(seed.value);
  for (bool causal : causal_modes()) {
    rng::manual_seed(seed.value);
    auto mech = make_mechanism(GetParam(), training_config(GetParam(), causal));
    mech->train();
    Tensor x = normal({B, N, D}, gen);
    auto plain = train_pass(*mech, x, seed.value, false);
    auto recomputed = train_pass(*mech, x, seed.value, true);
    ASSERT_EQ(plain.size(), recomputed.size());
    for (size_t i = 0; i < plain.size(); ++i)
      EXPECT_EQ(plain[i], recomputed[i]) << seed.str() << ": tensor " << i;
    if (caps().dropout) {  // and the dropout is really on: another seed gives another output
      auto other = train_pass(*mech, x, seed.value + 7, false);
      EXPECT_NE(other[0], plain[0]) << "attention dropout changed nothing";
    }
  }
}

TEST_P(Contract, CheckpointRoundTripGivesTheSameOutput) {
  Seed seed;
  rng::Generator gen(seed.value);
  const bool causal = caps().causal;
  rng::manual_seed(seed.value);
  auto saved = make_mechanism(GetParam(), config_for(GetParam(), causal));
  rng::manual_seed(seed.value + 1);
  auto loaded = make_mechanism(GetParam(), config_for(GetParam(), causal));
  saved->eval(), loaded->eval();
  Tensor x = normal({B, N, D}, gen);
  TempDir dir;
  saved->save(dir.file("mechanism.safetensors"));
  EXPECT_NE(values(loaded->forward(x)), values(saved->forward(x))) << "twins were initialised alike";
  loaded->load(dir.file("mechanism.safetensors"));
  EXPECT_EQ(values(loaded->forward(x)), values(saved->forward(x)));
}

// ---- options ----

TEST_P(Contract, BadOptionsAreRejectedWithTheirName) {
  MechanismConfig c = config_for(GetParam(), caps().causal);
  c.options = {{"no_such_option", 1}};
  expect_error<ValueError>([&] { make_mechanism(GetParam(), c); },
                           {"'" + GetParam() + "'", "unknown option 'no_such_option'", "valid options"});
  for (const OptionSpec& o : entry().options) {
    if (o.type == "tensor") continue;
    c.options = {{o.name, {{"not", "a value"}}}};  // no option takes a JSON object
    expect_error<ValueError>([&] { make_mechanism(GetParam(), c); }, {o.name});
  }
  if (entry().functional) {
    MechanismArgs args;
    args.options = {{"no_such_option", 1}};
    Tensor q = Tensor::zeros({1, 1, 4, 8});
    expect_error<ValueError>([&] { entry().functional(q, q, q, {}, args); }, {"no_such_option"});
  }
}

// A hostile size (2^62, -1) in any integer option is a ValueError naming it, or, for options where a
// huge value means something (seeds, step counts), a mechanism that runs: never a crash, never an
// internal error.
TEST_P(Contract, HostileIntegerOptionsAreErrorsOrHarmless) {
  for (const OptionSpec& o : entry().options) {
    if (o.type != "int") continue;
    for (int64_t value : {int64_t(1) << 62, int64_t(-1)}) {
      SCOPED_TRACE(o.name + " = " + std::to_string(value));
      MechanismConfig c = config_for(GetParam(), caps().causal);
      c.options = {{o.name, value}};
      std::shared_ptr<Mechanism> m;
      try {
        m = make_mechanism(GetParam(), c);
      } catch (const ValueError& e) {
        EXPECT_NE(std::string(e.what()).find(o.name), std::string::npos) << e.what();
        continue;
      }
      m->eval();
      try {
        m->forward(Tensor::zeros({1, 5, D}));
      } catch (const ValueError&) {  // a clear error at the call is fine too
      }
    }
  }
}

std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Registry, Contract, ::testing::ValuesIn(mechanism_names()), test_name);

}  // namespace
}  // namespace eformer::attention
