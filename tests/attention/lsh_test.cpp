// LSH attention (kernels/lsh.h, mechanisms/lsh.h): what the Python parity tests do not reach. Bad
// options and inputs, the bucket histogram of random keys, identical bits on 1 and 2 threads over
// many chunks and rounds, and memory that grows linearly in N (no N x N anything). The forward and
// gradients against float64 PyTorch are in tests/python/test_attention_lsh.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/kernels/lsh.h"
#include "eformer/attention/mechanisms/lsh.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

MechanismConfig lsh_config(nlohmann::json options, int64_t max_len = 256) {
  MechanismConfig c;
  c.d_model = 32;
  c.n_heads = 4;
  c.causal = true;
  c.max_len = max_len;
  c.options = options.is_null() ? nlohmann::json::object() : std::move(options);
  return c;
}

TEST(LshOptions, BadValuesAreErrorsNamingThem) {
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"n_buckets", 12}})); },
                           {"n_buckets = 12", "power of two"});
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"n_buckets", 0}})); }, {"n_buckets"});
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"chunk", 0}})); }, {"chunk = 0"});
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"n_hashes", 65}})); }, {"n_hashes = 65"});
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"redraw", 1}})); }, {"redraw"});
  expect_error<ValueError>([] { make_mechanism("lsh", lsh_config({{"bucket_size", 8}}, 0)); },
                           {"'lsh'", "max_len", "n_buckets"});
  MechanismConfig cross = lsh_config({});
  cross.causal = false, cross.cross = true;
  expect_error<ValueError>([&] { make_mechanism("lsh", cross); }, {"cross"});
  MechanismConfig dropout = lsh_config({});
  dropout.dropout = 0.1f;
  expect_error<ValueError>([&] { make_mechanism("lsh", dropout); }, {"no attention probabilities"});
  // The defaults: 2^round(log2(max_len / bucket_size)), at least 2.
  EXPECT_EQ(lsh_default_buckets(64, 64), 2);
  EXPECT_EQ(lsh_default_buckets(4096, 64), 64);
  EXPECT_EQ(lsh_default_buckets(5000, 64), 64);
  EXPECT_EQ(lsh_default_buckets(6000, 64), 128);
  auto m = std::dynamic_pointer_cast<LshAttention>(make_mechanism("lsh", lsh_config({{"bucket_size", 32}}, 1024)));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->n_buckets(), 32);
}

TEST(LshKernel, BucketsOfRandomKeysAreBalancedAndSorted) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t N = 4096, d = 16, nb = 8, rounds = 32;
  kernels::LshSizes s{1, 1, N, d, rounds, nb, 64, 0.25f, false};
  Tensor k = normal({N, d}, gen), R = normal({rounds, 1, d, nb / 2}, gen);
  std::vector<float> kn(size_t(N * d));
  for (int64_t i = 0; i < N; ++i) kernels::lsh_normalize_row(k.data<float>() + i * d, kn.data() + i * d, d);
  std::vector<int32_t> bucket(size_t(rounds * N)), order(size_t(rounds * N));
  kernels::lsh_sort(kn.data(), R.data<float>(), nullptr, bucket.data(), order.data(), s);
  // Isotropic keys: one rotation's buckets are unequal cones, but over random rotations every bucket's
  // expected share is 1 / nb (the hash is symmetric in the columns and in the sign); over 32 rounds
  // each bucket holds its share to within a third, and no round leaves a bucket empty.
  std::vector<int64_t> total(nb, 0);
  for (int64_t r = 0; r < rounds; ++r) {
    std::vector<int64_t> count(nb, 0);
    for (int64_t i = 0; i < N; ++i) ++count[size_t(bucket[size_t(r * N + i)])];
    for (int64_t b = 0; b < nb; ++b) {
      EXPECT_GT(count[size_t(b)], 0) << seed.str() << " round " << r << " bucket " << b;
      total[size_t(b)] += count[size_t(b)];
    }
    // The order sorts by (bucket, position).
    for (int64_t i = 1; i < N; ++i) {
      const int32_t a = order[size_t(r * N + i - 1)], b = order[size_t(r * N + i)];
      const int32_t ba = bucket[size_t(r * N + a)], bb = bucket[size_t(r * N + b)];
      ASSERT_TRUE(ba < bb || (ba == bb && a < b)) << "sorted index " << i;
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    EXPECT_GT(total[size_t(b)], rounds * N / nb * 2 / 3) << seed.str() << " bucket " << b;
    EXPECT_LT(total[size_t(b)], rounds * N / nb * 4 / 3) << seed.str() << " bucket " << b;
  }
  // Hashing one row at a time gives the same buckets (the streaming step hashes so).
  for (int64_t i = 0; i < 50; ++i) {
    int32_t b = -1;
    kernels::lsh_hash_rows(kn.data() + i * d, 1, d, R.data<float>(), nb, &b);
    EXPECT_EQ(b, bucket[size_t(i)]);
  }
}

TEST(LshKernel, FactorizedBucketsCombineTheFactorsHashes) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t n = 300, d = 8, nb = 1024;  // factors 32 x 32: 16 + 16 columns
  ASSERT_EQ(kernels::lsh_rotation_columns(nb), 32);
  ASSERT_EQ(kernels::lsh_rotation_columns(512), 24);  // 32 x 16
  ASSERT_EQ(kernels::lsh_rotation_columns(256), 128);  // not factorized
  Tensor x = normal({n, d}, gen), R = normal({d, 32}, gen);
  std::vector<float> R1(size_t(d * 16)), R2(size_t(d * 16));
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < 16; ++j) {
      R1[size_t(c * 16 + j)] = R.data<float>()[c * 32 + j];
      R2[size_t(c * 16 + j)] = R.data<float>()[c * 32 + 16 + j];
    }
  std::vector<int32_t> both(n), first(n), second(n);
  kernels::lsh_hash_rows(x.data<float>(), n, d, R.data<float>(), nb, both.data());
  kernels::lsh_hash_rows(x.data<float>(), n, d, R1.data(), 32, first.data());
  kernels::lsh_hash_rows(x.data<float>(), n, d, R2.data(), 32, second.data());
  std::vector<int64_t> used_first(32, 0), used_second(32, 0);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(both[size_t(i)], first[size_t(i)] + 32 * second[size_t(i)]) << seed.str() << " row " << i;
    ++used_first[size_t(first[size_t(i)])], ++used_second[size_t(second[size_t(i)])];
  }
  auto distinct = [](const std::vector<int64_t>& u) { return std::count_if(u.begin(), u.end(), [](int64_t c) { return c > 0; }); };
  EXPECT_GE(distinct(used_first), 8) << seed.str();  // both factors really vary
  EXPECT_GE(distinct(used_second), 8) << seed.str();
}

// Forward and the three gradients of the functional form, on `threads` threads.
std::vector<std::vector<float>> run_lsh(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& R,
                                        const Tensor& g, bool causal, int threads) {
  const int before = parallel::num_threads();
  parallel::set_num_threads(threads);
  Tensor ql = leaf(q), kl = leaf(k), vl = leaf(v);
  AttentionOptions opts;
  opts.causal = causal;
  Tensor out = lsh_attention(ql, kl, vl, R, 16, 16, opts);
  backward(out, g);
  parallel::set_num_threads(before);
  return {values(out), values(grad(ql)), values(grad(kl)), values(grad(vl))};
}

TEST(LshKernel, IdenticalBitsOnOneAndTwoThreads) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 1, H = 1, N = 1000, d = 24;  // B H = 1: the chunks are what runs in parallel
  Tensor q = normal({B, H, N, d}, gen), k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen),
         g = normal({B, H, N, d}, gen), R = normal({3, H, d, 8}, gen);
  for (bool causal : {false, true}) {
    auto one = run_lsh(q, k, v, R, g, causal, 1), two = run_lsh(q, k, v, R, g, causal, 2);
    for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << seed.str() << " tensor " << i;
  }
}

// The allocator's peak over a forward and backward at length N (inputs included).
int64_t peak_bytes(int64_t N) {
  rng::Generator gen(1);
  const int64_t H = 2, d = 32;
  Tensor q = leaf(normal({1, H, N, d}, gen)), v = leaf(normal({1, H, N, d}, gen));
  Tensor R = normal({2, H, d, 16}, gen), g = normal({1, H, N, d}, gen);
  allocator::reset_peak();
  const int64_t live = allocator::stats().live_bytes;
  AttentionOptions opts;
  opts.causal = true;
  backward(lsh_attention(q, q, v, R, 32, 32, opts), g);
  return allocator::stats().peak_bytes - live;
}

TEST(LshKernel, MemoryGrowsLinearlyInN) {
  const int64_t small = peak_bytes(4096), large = peak_bytes(16384);
  // N x N scores would be 16x; O(N (n_hashes + d)) is 4x (per-thread tiles are constant).
  EXPECT_LT(double(large) / double(small), 4.6) << small << " -> " << large;
  EXPECT_LT(large, int64_t(16384) * 2 * 400 * 4) << "more than ~400 floats per (head, position)";
}

TEST(LshMechanism, RotationsReplayUnderCheckpoint) {
  rng::manual_seed(3);
  auto m = make_mechanism("lsh", lsh_config({{"n_buckets", 4}, {"chunk", 4}}));
  m->train();
  rng::Generator gen(9);
  Tensor x = normal({1, 30, 32}, gen), g = normal({1, 30, 32}, gen);
  auto pass = [&](bool recompute) {
    rng::manual_seed(17);
    m->zero_grad();
    Tensor xl = leaf(x);
    auto fn = [&](const std::vector<Tensor>& in) { return m->forward(in[0]); };
    Tensor y = recompute ? autograd::checkpoint(fn, {xl}) : fn({xl});
    backward(y, g);
    return std::vector<std::vector<float>>{values(y), values(grad(xl))};
  };
  EXPECT_EQ(pass(false), pass(true));
}

}  // namespace
}  // namespace eformer::attention
