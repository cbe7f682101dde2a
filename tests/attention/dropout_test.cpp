// Dropout on the attention probabilities (AttentionOptions::dropout) for full and flash: both drop
// exactly the elements the contract names (ops/dropout.h's rule on the [B, H, N, M] probabilities),
// the mask is replayed by the backward, autograd::checkpoint and any thread count, and dropout = 0
// changes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/functional.h"
#include "eformer/attention/kernels/flash.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"

namespace eformer::attention {
namespace {

using AttnFn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const AttentionOptions&);

using testing::randn;

// Bool [B, M]: key j of row b is real unless (j + 3 b) % 5 == 0; row `empty_row` (if >= 0) has none.
Tensor key_mask(int64_t B, int64_t M, int64_t empty_row = -1) {
  std::vector<uint8_t> bits(size_t(B * M));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < M; ++j) bits[size_t(b * M + j)] = b != empty_row && (j + 3 * b) % 5 != 0;
  Tensor m = Tensor::zeros({B, M}, DType::Bool);
  for (size_t i = 0; i < bits.size(); ++i) m.data<bool>()[i] = bits[i] != 0;
  return m;
}

// The output and the q, k, v gradients of fn for the upstream gradient `up`, from generator state st.
struct Result {
  std::vector<float> out, dq, dk, dv;
};
Result run(AttnFn fn, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o,
           const Tensor& up, const rng::Generator::State& st, bool checkpointed = false) {
  rng::default_generator().set_state(st);
  Tensor ql = q.clone_data(), kl = k.clone_data(), vl = v.clone_data();
  for (const Tensor& t : {ql, kl, vl}) set_requires_grad(t, true);
  Tensor out = checkpointed ? autograd::checkpoint(
                                  [&](const std::vector<Tensor>& in) { return fn(in[0], in[1], in[2], o); },
                                  {ql, kl, vl})
                            : fn(ql, kl, vl, o);
  backward(out, up);
  return {out.to_vector(), grad(ql).to_vector(), grad(kl).to_vector(), grad(vl).to_vector()};
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, double tol,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_FALSE(std::isnan(b[i])) << what << " at " << i;
    ASSERT_NEAR(a[i], b[i], tol * (1.0 + std::abs(a[i]))) << what << " at " << i;
  }
}

struct Case {
  int64_t B, H, N, M, d;
  bool causal, masked;
  float p;
};

TEST(AttentionDropout, FlashDropsTheSameElementsAsFullForwardAndGradients) {
  const rng::Generator::State st{1234, 7, 99};
  const std::vector<Case> cases = {
      {2, 2, 65, 65, 40, false, false, 0.3f},  {2, 2, 65, 65, 40, true, false, 0.3f},
      {1, 2, 130, 200, 16, false, true, 0.5f}, {1, 2, 130, 200, 16, true, true, 0.5f},
      {2, 1, 7, 130, 8, true, false, 0.2f},    {2, 1, 200, 7, 24, true, true, 0.7f},
      {2, 2, 129, 257, 20, false, true, 0.1f}, {3, 1, 33, 45, 12, true, true, 0.4f},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " H " + std::to_string(c.H) + " N " + std::to_string(c.N) +
                 " M " + std::to_string(c.M) + " d " + std::to_string(c.d) + " causal " +
                 std::to_string(c.causal) + " masked " + std::to_string(c.masked) + " p " +
                 std::to_string(c.p));
    Tensor q = randn({c.B, c.H, c.N, c.d}, 11), k = randn({c.B, c.H, c.M, c.d}, 12),
           v = randn({c.B, c.H, c.M, c.d}, 13), up = randn({c.B, c.H, c.N, c.d}, 14);
    AttentionOptions o;
    o.causal = c.causal;
    if (c.masked) o.key_mask = key_mask(c.B, c.M, c.B > 2 ? 1 : -1);  // B = 3: a row with no real key
    o.dropout = c.p;
    const Result full = run(&full_attention, q, k, v, o, up, st);
    const Result flash = run(&flash_attention, q, k, v, o, up, st);
    // Both advance the generator by ceil(B H N M / 4).
    EXPECT_EQ(rng::default_generator().state().counter, st.counter + uint64_t(c.B * c.H * c.N * c.M + 3) / 4);
    expect_close(full.out, flash.out, 3e-5, "out");
    expect_close(full.dq, flash.dq, 1e-4, "dq");
    expect_close(full.dk, flash.dk, 1e-4, "dk");
    expect_close(full.dv, flash.dv, 1e-4, "dv");
    // The dropout did something: the undropped output differs.
    AttentionOptions plain = o;
    plain.dropout = 0.0f;
    const std::vector<float> undropped = flash_attention(q, k, v, plain).to_vector();
    double diff = 0;
    for (size_t i = 0; i < undropped.size(); ++i)
      diff = std::max(diff, double(std::abs(undropped[i] - flash.out[i])));
    EXPECT_GT(diff, 1e-2);
  }
}

// q = 0 makes every probability 1 / M; with d = M and v = I, O[b, h, i, j] = P_ij Z_ij, so the flat
// output index is the element index e of the contract and O_e = keep_e / (M (1 - p)) with keep_e
// the uniform draw of rng::fill_uniform at e being >= p.
TEST(AttentionDropout, DropsAboutPOfTheProbabilitiesAsTheContractNames) {
  const int64_t B = 2, H = 3, N = 150, M = 64;
  Tensor q = Tensor::zeros({B, H, N, M});
  std::vector<float> eye(size_t(B * H * M * M), 0.0f);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t j = 0; j < M; ++j) eye[size_t((bh * M + j) * M + j)] = 1.0f;
  Tensor k = randn({B, H, M, M}, 3), v = Tensor::from_vector(eye, {B, H, M, M});
  const rng::Generator::State st{42, 1, 1000};
  const int64_t n = B * H * N * M;
  std::vector<float> uniform(static_cast<size_t>(n));
  rng::fill_uniform(uniform.data(), n, st.seed, st.stream, st.counter);
  for (float p : {0.1f, 0.5f, 0.9f}) {
    for (AttnFn fn : {&full_attention, &flash_attention}) {
      AttentionOptions o;
      o.dropout = p;
      rng::default_generator().set_state(st);
      const std::vector<float> out = fn(q, k, v, o).to_vector();
      int64_t dropped = 0;
      const float kept_value = 1.0f / (float(M) * (1.0f - p));
      for (int64_t e = 0; e < n; ++e) {
        const bool keep = uniform[size_t(e)] >= p;
        dropped += !keep;
        if (keep)
          ASSERT_NEAR(out[size_t(e)], kept_value, 1e-6 * kept_value) << "p " << p << " e " << e;
        else
          ASSERT_EQ(out[size_t(e)], 0.0f) << "p " << p << " e " << e;
      }
      const double frac = double(dropped) / double(n), sigma = std::sqrt(p * (1 - p) / double(n));
      EXPECT_NEAR(frac, p, 5 * sigma) << "p " << p;
    }
  }
}

TEST(AttentionDropout, SameGeneratorStateReplaysBitForBit) {
  Tensor q = randn({2, 2, 140, 24}, 1), k = randn({2, 2, 150, 24}, 2), v = randn({2, 2, 150, 24}, 3),
         up = randn({2, 2, 140, 24}, 4);
  AttentionOptions o;
  o.causal = true;
  o.key_mask = key_mask(2, 150);
  o.dropout = 0.25f;
  const rng::Generator::State st{5, 0, 17}, other{5, 0, 17 + 2 * 2 * 140 * 150 / 4};
  for (AttnFn fn : {&full_attention, &flash_attention}) {
    const Result a = run(fn, q, k, v, o, up, st), b = run(fn, q, k, v, o, up, st);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.dq, b.dq);
    EXPECT_EQ(a.dk, b.dk);
    EXPECT_EQ(a.dv, b.dv);
    // The state after a call: a different mask.
    const Result c = run(fn, q, k, v, o, up, other);
    EXPECT_NE(a.out, c.out);
    EXPECT_NE(a.dq, c.dq);
    // autograd::checkpoint recomputes with the replayed state: the same output and gradients.
    const Result ck = run(fn, q, k, v, o, up, st, /*checkpointed=*/true);
    EXPECT_EQ(a.out, ck.out);
    EXPECT_EQ(a.dq, ck.dq);
    EXPECT_EQ(a.dk, ck.dk);
    EXPECT_EQ(a.dv, ck.dv);
  }
}

TEST(AttentionDropout, OneAndTwoThreadsAgreeBitForBit) {
  Tensor q = randn({2, 2, 300, 32}, 5), k = randn({2, 2, 270, 32}, 6), v = randn({2, 2, 270, 32}, 7),
         up = randn({2, 2, 300, 32}, 8);
  AttentionOptions o;
  o.causal = true;
  o.key_mask = key_mask(2, 270);
  o.dropout = 0.35f;
  const rng::Generator::State st{77, 2, 3};
  const int saved = parallel::num_threads();
  for (AttnFn fn : {&full_attention, &flash_attention}) {
    parallel::set_num_threads(1);
    const Result one = run(fn, q, k, v, o, up, st);
    parallel::set_num_threads(2);
    const Result two = run(fn, q, k, v, o, up, st);
    parallel::set_num_threads(saved);
    EXPECT_EQ(one.out, two.out);
    EXPECT_EQ(one.dq, two.dq);
    EXPECT_EQ(one.dk, two.dk);
    EXPECT_EQ(one.dv, two.dv);
  }
}

TEST(AttentionDropout, OutsideZeroOneIsAValueErrorNamingDropout) {
  Tensor q = randn({1, 2, 5, 8}, 1), k = randn({1, 2, 6, 8}, 2), v = randn({1, 2, 6, 8}, 3);
  for (const char* kind : {"full", "flash"})
    for (float p : {1.0f, 1.5f, -0.1f, std::numeric_limits<float>::quiet_NaN()}) {
      AttentionOptions o;
      o.dropout = p;
      const rng::Generator::State before = rng::default_generator().state();
      testing::expect_error<ValueError>([&] { attention(q, k, v, kind, o); }, {"dropout"});
      EXPECT_EQ(rng::default_generator().state(), before) << kind;
    }
}

TEST(AttentionDropout, ZeroIsTodaysOutputAndReservesNothing) {
  Tensor q = randn({2, 2, 130, 16}, 1), k = randn({2, 2, 131, 16}, 2), v = randn({2, 2, 131, 16}, 3),
         up = randn({2, 2, 130, 16}, 4);
  const rng::Generator::State st{9, 9, 9};
  for (bool causal : {false, true}) {
    AttentionOptions plain, zero;
    plain.causal = zero.causal = causal;
    zero.dropout = 0.0f;
    for (AttnFn fn : {&full_attention, &flash_attention}) {
      const Result a = run(fn, q, k, v, plain, up, st);
      const Result b = run(fn, q, k, v, zero, up, st);
      EXPECT_EQ(rng::default_generator().state(), st);  // nothing reserved, forward or backward
      EXPECT_EQ(a.out, b.out);
      EXPECT_EQ(a.dq, b.dq);
      EXPECT_EQ(a.dk, b.dk);
      EXPECT_EQ(a.dv, b.dv);
    }
  }
  // The kernels: a null FlashDropout and p = 0 are the same plain path.
  const int64_t BH = 4, N = 130, M = 131, d = 16;
  std::vector<float> o1(size_t(BH * N * d)), o2(o1.size()), l1(size_t(BH * N)), l2(l1.size());
  const kernels::FlashDropout off{0.0f, 1, 2, 3};
  kernels::flash_attention_forward(q.data<float>(), k.data<float>(), v.data<float>(), nullptr, o1.data(),
                                   l1.data(), 2, 2, N, M, d, 0.25f, true);
  kernels::flash_attention_forward(q.data<float>(), k.data<float>(), v.data<float>(), nullptr, o2.data(),
                                   l2.data(), 2, 2, N, M, d, 0.25f, true, &off);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(l1, l2);
}

}  // namespace
}  // namespace eformer::attention
