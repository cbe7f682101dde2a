// The Attention Free Transformer (mechanisms/aft.h, kernels/aft.h) beyond the registry's contract
// suite: a float64 reference of eq. 2 written from the definition (dense w, per-pair exponentials)
// for forward and the k, v, w gradients, at ordinary scale and at |K| = 80; AFT-local equals AFT-full
// with the banded w, AFT-conv equals AFT-local with the Toeplitz band; streaming in pieces equals the
// parallel causal pass with windows short enough that the prefix sums are used; bad input errors.
// Inputs are drawn from a fresh seed each run ("[ seed ]"); EFORMER_TEST_SEED=<n> replays one.
#include "eformer/attention/kernels/aft.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../test_util.h"
#include "eformer/attention/kernels/aft_pairs.h"
#include "eformer/attention/mechanisms/aft.h"
#include "eformer/eformer.h"

namespace eformer::attention {
namespace {

using testing::expect_error;
using testing::expect_near_all;
using testing::leaf;
using testing::normal;
using testing::Seed;
using testing::values;

// Float64 eq. 2 without the gate, from the definition: A [B, H, N, d] and, for the upstream g, the
// gradients of sum(A * g) w.r.t. k, v [B, H, M, d] and the dense w [H, N, M].
struct Reference {
  std::vector<double> A, dk, dv, dw;
};
Reference reference(const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& w,
                    const std::vector<float>& g, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d,
                    bool causal) {
  Reference r;
  r.A.assign(B * H * N * d, 0), r.dk.assign(B * H * M * d, 0), r.dv.assign(B * H * M * d, 0),
      r.dw.assign(H * N * M, 0);
  std::vector<double> e(M);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t c = 0; c < d; ++c) {
          const int64_t kv = (b * H + h) * M, o = ((b * H + h) * N + t) * d + c;
          const int64_t end = causal ? t + 1 : M;
          double mx = -INFINITY, den = 0, num = 0;
          for (int64_t j = 0; j < end; ++j)
            mx = std::max(mx, double(k[(kv + j) * d + c]) + w[(h * N + t) * M + j]);
          for (int64_t j = 0; j < end; ++j) {
            e[j] = std::exp(double(k[(kv + j) * d + c]) + w[(h * N + t) * M + j] - mx);
            den += e[j], num += e[j] * v[(kv + j) * d + c];
          }
          const double A = num / den;
          r.A[o] = A;
          for (int64_t j = 0; j < end; ++j) {
            const double p = e[j] / den, gl = p * g[o] * (v[(kv + j) * d + c] - A);
            r.dv[(kv + j) * d + c] += p * g[o];
            r.dk[(kv + j) * d + c] += gl;
            r.dw[(h * N + t) * M + j] += gl;
          }
        }
  return r;
}

// The dense w [H, N, M] of a band [H, N, S] (window start p) or of a kernel [H, S].
Tensor dense_of(const Tensor& band, int64_t N, int64_t M, int64_t p) {
  const int64_t H = band.size(0), S = band.size(band.dim() - 1);
  const bool kernel = band.dim() == 2;
  Tensor w = Tensor::zeros({H, N, M});
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t j = 0; j < M; ++j) {
        const int64_t i = j - t + p;
        if (i >= 0 && i < S)
          w.data<float>()[(h * N + t) * M + j] = band.data<float>()[kernel ? h * S + i : (h * N + t) * S + i];
      }
  return w;
}

TEST(Aft, AverageMatchesTheFloat64DefinitionIncludingLargeKeys) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, d = 5;
  for (float kscale : {1.0f, 80.0f})
    for (bool causal : {false, true})
      for (const char* kind : {"dense", "band", "toeplitz", "none"}) {
        const int64_t N = 23, M = causal ? N : 17, s = 3;
        SCOPED_TRACE(seed.str() + " " + kind + (causal ? " causal" : " bidirectional") + " |K| scale " +
                     std::to_string(kscale));
        // K uniform-ish in [-kscale, kscale]: normal clamped, so |K| reaches the scale.
        Tensor k = normal({B, H, M, d}, gen, kscale);
        for (int64_t i = 0; i < k.numel(); ++i)
          k.data<float>()[i] = std::clamp(k.data<float>()[i], -kscale, kscale);
        Tensor v = normal({B, H, M, d}, gen), g = normal({B, H, N, d}, gen);
        AftLayout L;
        Tensor w, dense;
        const std::string kd = kind;
        if (kd == "dense") {
          L = aft_layout("aft_full", 0, causal);
          w = normal({H, N, M}, gen, 2.0f), dense = w;
        } else if (kd == "band") {
          L = aft_layout("aft_local", s, causal);
          w = normal({H, N, L.S}, gen, 2.0f), dense = dense_of(w, N, M, L.p);
        } else if (kd == "toeplitz") {
          L = aft_layout("aft_conv", s + 1, causal);
          w = normal({H, L.S}, gen, 2.0f), dense = dense_of(w, N, M, L.p);
        } else {
          L = aft_layout("aft_simple", 0, causal);
          dense = Tensor::zeros({H, N, M});
        }
        Tensor kl = leaf(k), vl = leaf(v), wl = w.defined() ? leaf(w) : Tensor();
        Tensor A = aft_average(kl, vl, wl, L, N);
        backward(A, g);
        const Reference r = reference(values(k), values(v), values(dense), values(g), B, H, N, M, d, causal);
        expect_near_all(values(A), r.A, 2e-5, "A");
        expect_near_all(values(grad(kl)), r.dk, 1e-4, "grad k");
        expect_near_all(values(grad(vl)), r.dv, 1e-4, "grad v");
        if (!w.defined()) continue;
        // The layout's w gradient is the dense one gathered (summed over t for a kernel).
        std::vector<double> dwl(size_t(w.numel()), 0.0);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t t = 0; t < N; ++t)
            for (int64_t j = 0; j < M; ++j) {
              const double x = r.dw[(h * N + t) * M + j];
              if (kd == "dense") {
                dwl[(h * N + t) * M + j] += x;
              } else if (const int64_t i = j - t + L.p; i >= 0 && i < L.S) {
                dwl[kd == "band" ? (h * N + t) * L.S + i : h * L.S + i] += x;
              }
            }
        expect_near_all(values(grad(wl)), dwl, 1e-4, "grad w");
      }
}

// AFT-full's GEMM kernels (kernels/aft_full.cpp, aft_full_bidirectional.cpp) vs the float64 definition:
// causal over three query blocks of 128 (the last partial), bidirectional over two panels of 512 rows (the
// last partial; fewer keys than queries, two heads) and with w needing no gradient (the backward skips dw).
TEST(Aft, BlockedFullMatchesTheFloat64DefinitionAcrossBlocks) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, d = 3;
  for (bool causal : {true, false})
    // 80: past the GEMM's range, the pair-by-pair path; -1: scale 1 but key 150 past that range alone
    // (causal: the rows from 150 on pair by pair, the earlier ones by the GEMM).
    for (float kscale : {1.0f, 80.0f, -1.0f}) {
      const int64_t N = causal ? 300 : 600, H = causal ? 1 : 2, M = causal ? N : 570;
      SCOPED_TRACE(seed.str() + (causal ? " causal" : " bidirectional") + " |K| scale " +
                   std::to_string(kscale));
      const float scale = std::fabs(kscale);
      Tensor k = normal({B, H, M, d}, gen, scale);
      for (int64_t i = 0; i < k.numel(); ++i)
        k.data<float>()[i] = std::clamp(k.data<float>()[i], -scale, scale);
      if (kscale < 0)
        for (int64_t bh = 0; bh < B * H; ++bh)
          k.data<float>()[(bh * M + 150) * d + bh % d] = bh % 2 ? 40.f : -40.f;
      Tensor v = normal({B, H, M, d}, gen), g = normal({B, H, N, d}, gen),
             w = normal({H, N + 3, M + 1}, gen, 0.5f);
      Tensor dense = contiguous(slice(slice(w, 1, 0, N), 2, 0, M));
      Tensor kl = leaf(k), vl = leaf(v), wl = leaf(w);
      Tensor A = causal ? aft_full_causal(kl, vl, wl) : aft_full_bidirectional(kl, vl, wl, N);
      backward(A, g);
      const Reference r = reference(values(k), values(v), values(dense), values(g), B, H, N, M, d, causal);
      expect_near_all(values(A), r.A, 2e-5, "A");
      expect_near_all(values(grad(kl)), r.dk, 1e-4, "grad k");
      expect_near_all(values(grad(vl)), r.dv, 1e-4, "grad v");
      std::vector<double> dw(size_t(w.numel()), 0.0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < N; ++t)
          for (int64_t j = 0; j < M; ++j) dw[(h * (N + 3) + t) * (M + 1) + j] = r.dw[(h * N + t) * M + j];
      expect_near_all(values(grad(wl)), dw, 1e-4, "grad w");
      if (!causal) {
        Tensor kn = leaf(k), vn = leaf(v);
        backward(aft_full_bidirectional(kn, vn, w, N), g);
        expect_near_all(values(grad(kn)), r.dk, 1e-4, "grad k, w without gradient");
        expect_near_all(values(grad(vn)), r.dv, 1e-4, "grad v, w without gradient");
        continue;
      }
      // Causal to the bit: changing the keys after row 200 leaves rows <= 200 as they were.
      Tensor k2 = k.clone_data();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 201 * d; i < N * d; ++i) k2.data<float>()[b * N * d + i] += 7.0f;
      const std::vector<float> a1 = values(A), a2 = values(aft_full_causal(k2, v, w));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < 201 * d; ++i)
          ASSERT_EQ(a1[b * N * d + i], a2[b * N * d + i]) << "row " << i / d;
    }
}

// average(k, v, w) -> A: its output and the gradients of k, v and w for the upstream g are the same bits on
// one and on two threads.
template <class F>
void expect_same_bits_on_one_and_two_threads(const Tensor& k, const Tensor& v, const Tensor& w,
                                             const Tensor& g, F average) {
  const int before = parallel::num_threads();
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2}) {
    parallel::set_num_threads(threads);
    Tensor kl = leaf(k), vl = leaf(v), wl = leaf(w);
    Tensor A = average(kl, vl, wl);
    backward(A, g);
    std::vector<float> all = values(A);
    for (const Tensor& x : {grad(kl), grad(vl), grad(wl)}) {
      const std::vector<float> xs = values(x);
      all.insert(all.end(), xs.begin(), xs.end());
    }
    runs.push_back(all);
  }
  parallel::set_num_threads(before);
  ASSERT_EQ(runs[0].size(), runs[1].size());
  for (size_t i = 0; i < runs[0].size(); ++i) ASSERT_EQ(runs[0][i], runs[1][i]) << "value " << i;
}

// AFT-full's GEMMs are split by fixed column chunks or tiles, each on one thread: the same bits on one and
// two threads (a threaded GEMM may split its sums over K by the thread count), at a size where that split
// happened.
TEST(Aft, BlockedFullGivesTheSameBitsOnOneAndTwoThreads) {
  Seed seed;
  rng::Generator gen(seed.value);
  for (bool causal : {true, false}) {
    const int64_t B = 2, H = 1, N = causal ? 300 : 600, d = 256;  // bidirectional: two panels of 512 rows
    Tensor k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen), w = normal({H, N, N}, gen, 0.3f),
           g = normal({B, H, N, d}, gen);
    SCOPED_TRACE(seed.str() + (causal ? " causal" : " bidirectional"));
    expect_same_bits_on_one_and_two_threads(
        k, v, w, g, [&](const Tensor& kl, const Tensor& vl, const Tensor& wl) {
          return causal ? aft_full_causal(kl, vl, wl) : aft_full_bidirectional(kl, vl, wl, N);
        });
  }
}

// The banded GEMM path of AFT-local and AFT-conv (kernels/aft_band.cpp) vs the float64 definition: sizes
// with a partial last block of 32 rows, fewer queries than the window, and a wide-range case where some
// rows take the pair-by-pair path (keys whose channels spread beyond the GEMM's range) and the rest the GEMM.
TEST(Aft, BandedWindowGemmMatchesTheFloat64DefinitionAcrossBlocks) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 2, d = 4, s = 9;
  for (const char* range : {"ordinary", "some wide keys", "all wide"})
    for (int64_t N : {7, 75})
      for (bool causal : {false, true})
        for (const char* kind : {"band", "toeplitz"}) {
          const int64_t M = causal ? N : N + 5;
          const std::string kd = kind, rg = range;
          SCOPED_TRACE(seed.str() + " " + kd + (causal ? " causal" : " bidirectional") + " N " +
                       std::to_string(N) + " " + rg);
          Tensor k = normal({B, H, M, d}, gen, rg == "all wide" ? 40.0f : 1.0f);
          if (rg == "some wide keys")  // keys 20 and 50: one channel at +-50, past the GEMM's range of 60
            for (int64_t bh = 0; bh < B * H; ++bh)
              for (int64_t j : {int64_t(20), int64_t(50)})
                if (j < M) k.data<float>()[(bh * M + j) * d + bh % d] = bh % 2 ? 50.0f : -50.0f;
          Tensor v = normal({B, H, M, d}, gen), g = normal({B, H, N, d}, gen);
          const AftLayout L =
              kd == "band" ? aft_layout("aft_local", s, causal) : aft_layout("aft_conv", s, causal);
          Tensor w = kd == "band" ? normal({H, N + 2, L.S}, gen, 2.0f) : normal({H, L.S}, gen, 2.0f);
          Tensor dense = dense_of(kd == "band" ? contiguous(slice(w, 1, 0, N)) : w, N, M, L.p);
          Tensor kl = leaf(k), vl = leaf(v), wl = leaf(w);
          Tensor A = aft_average(kl, vl, wl, L, N);
          backward(A, g);
          const Reference r =
              reference(values(k), values(v), values(dense), values(g), B, H, N, M, d, causal);
          expect_near_all(values(A), r.A, 2e-5, "A");
          expect_near_all(values(grad(kl)), r.dk, 1e-4, "grad k");
          expect_near_all(values(grad(vl)), r.dv, 1e-4, "grad v");
          std::vector<double> dwl(size_t(w.numel()), 0.0);
          for (int64_t h = 0; h < H; ++h)
            for (int64_t t = 0; t < N; ++t)
              for (int64_t j = 0; j < M; ++j)
                if (const int64_t i = j - t + L.p; i >= 0 && i < L.S)
                  dwl[kd == "band" ? (h * (N + 2) + t) * L.S + i : h * L.S + i] += r.dw[(h * N + t) * M + j];
          expect_near_all(values(grad(wl)), dwl, 1e-4, "grad w");
        }
}

// Causal to the bit on the banded path (later keys and values change no earlier output), and the same bits
// on one and two threads, also with a single (batch, head) where only the GEMMs could use the threads.
TEST(Aft, BandedWindowGemmIsCausalToTheBitAndThreadIndependent) {
  Seed seed;
  rng::Generator gen(seed.value);
  for (int64_t B : {1, 3}) {
    const int64_t H = 1, N = 150, d = 96, cut = 70;
    SCOPED_TRACE(seed.str() + " B " + std::to_string(B));
    const AftLayout L = aft_layout("aft_local", 32, true);
    Tensor k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen), g = normal({B, H, N, d}, gen),
           w = normal({H, N, L.S}, gen);
    Tensor k2 = k.clone_data(), v2 = v.clone_data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = (cut + 1) * d; i < N * d; ++i)
        k2.data<float>()[b * N * d + i] += 30.0f, v2.data<float>()[b * N * d + i] -= 3.0f;
    const std::vector<float> a1 = values(aft_average(k, v, w, L, N)),
                             a2 = values(aft_average(k2, v2, w, L, N));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < (cut + 1) * d; ++i)
        ASSERT_EQ(a1[b * N * d + i], a2[b * N * d + i]) << "row " << i / d;
    expect_same_bits_on_one_and_two_threads(
        k, v, w, g,
        [&](const Tensor& kl, const Tensor& vl, const Tensor& wl) { return aft_average(kl, vl, wl, L, N); });
  }
}

TEST(Aft, FastLogOfTheNormalizersMatchesTheLibraryLog) {
  for (double x = 1e-37; x < 1e37; x *= 1.0137)  // every binade, at uneven points
    for (float y : {float(x), std::nextafter(float(x), 0.f)}) {
      const double exact = std::log(double(y)), got = kernels::fast_log(y);
      ASSERT_NEAR(got, exact, 2e-7 * std::max(1.0, std::fabs(exact))) << "x = " << y;
    }
}

MechanismArgs with_w(const Tensor& w) {
  MechanismArgs a;
  a.tensors["w"] = w;
  return a;
}

TEST(Aft, LocalEqualsFullWithTheBandedBiasAndConvEqualsLocalWithItsBand) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, H = 1, N = 30, d = 6, s = 4;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(seed.str() + (causal ? " causal" : " bidirectional"));
    AttentionOptions opts;
    opts.causal = causal;
    Tensor q = normal({B, H, N, d}, gen), k = normal({B, H, N, d}, gen), v = normal({B, H, N, d}, gen);
    Tensor g = normal({B, H, N, d}, gen);
    const AftLayout L = aft_layout("aft_local", s, causal);
    Tensor band = normal({H, N, L.S}, gen);
    auto run = [&](const std::string& kind, const Tensor& w) {
      Tensor ql = leaf(q), kl = leaf(k), vl = leaf(v), wl = leaf(w);
      Tensor y = attention(ql, kl, vl, kind, opts, with_w(wl));
      backward(y, g);
      return std::vector<std::vector<float>>{values(y), values(grad(ql)), values(grad(kl)), values(grad(vl))};
    };
    const auto local = run("aft_local", band);
    const auto full = run("aft_full", dense_of(band, N, N, L.p));
    for (size_t i = 0; i < local.size(); ++i)
      for (size_t j = 0; j < local[i].size(); ++j)
        ASSERT_NEAR(local[i][j], full[i][j], 2e-5) << "tensor " << i;
    // AFT-conv with kernel u is AFT-local with the band u repeated at every t (causal: same window).
    const AftLayout C = aft_layout("aft_conv", causal ? s : 2 * s - 1, causal);
    ASSERT_EQ(C.p, L.p);
    Tensor u = normal({H, C.S}, gen), repeated = Tensor::empty({H, N, C.S});
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < C.S; ++i) repeated.data<float>()[t * C.S + i] = u.data<float>()[i];
    const auto conv = run("aft_conv", u);
    const auto as_local = run("aft_local", repeated);
    for (size_t i = 0; i < conv.size(); ++i)
      for (size_t j = 0; j < conv[i].size(); ++j)
        ASSERT_NEAR(conv[i][j], as_local[i][j], 2e-5) << "tensor " << i;
  }
}

TEST(Aft, StreamingInPiecesEqualsTheParallelPassBeyondTheWindow) {
  Seed seed;
  rng::Generator gen(seed.value);
  const int64_t B = 2, N = 41, D = 16;
  for (const std::string variant :
       {"aft_full", "aft_simple", "aft_local", "aft_local_factorized", "aft_conv"}) {
    SCOPED_TRACE(seed.str() + " " + variant);
    const std::string name = variant == "aft_local_factorized" ? "aft_local" : variant;
    MechanismConfig c;
    c.d_model = D, c.n_heads = 2, c.causal = true, c.max_len = 48;
    c.options = variant == "aft_local" ? nlohmann::json{{"window", 3}}
                : variant == "aft_local_factorized"
                    ? nlohmann::json{{"window", 3}, {"factorized", true}, {"hidden", 4}}
                : variant == "aft_conv" ? nlohmann::json{{"kernel", 4}}
                : variant == "aft_full" ? nlohmann::json{{"hidden", 8}}
                                        : nlohmann::json::object();
    rng::manual_seed(seed.value);
    auto mech = make_mechanism(name, c);
    mech->eval();
    // Give the conv reparameterization and every bias a visible size (they start at or near 0).
    for (auto& [pname, p] : mech->named_parameters())
      if (pname == "gamma" || pname == "beta" || pname == "w")
        for (int64_t i = 0; i < p.numel(); ++i) p.data<float>()[i] = 0.5f + 0.1f * float(i % 7);
      else if (pname == "w_u" || pname == "w_v")
        for (int64_t i = 0; i < p.numel(); ++i) p.data<float>()[i] = 0.3f * std::sin(float(i));
    Tensor x = normal({B, N, D}, gen, 3.0f);
    const std::vector<float> full = values(mech->forward(x));
    auto state = mech->start(B);
    int64_t at = 0;
    for (int64_t n : {1, 1, 5, 2, 13, 1, 18}) {
      const std::vector<float> out = values(mech->step(contiguous(slice(x, 1, at, at + n)), *state));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t e = 0; e < D; ++e)
            ASSERT_NEAR(out[(b * n + i) * D + e], full[(b * N + at + i) * D + e], 2e-5) << "row " << at + i;
      at += n;
    }
    ASSERT_EQ(at, N);
    EXPECT_EQ(mech->streaming_path(), "native");
  }
}

TEST(Aft, BadInputIsAnErrorNamingTheArgument) {
  MechanismConfig c;
  c.d_model = 8, c.n_heads = 2, c.causal = true, c.max_len = 16;
  c.options = {{"window", 0}};
  expect_error<ValueError>([&] { make_mechanism("aft_local", c); }, {"aft_local", "window", "0", ">= 1"});
  c.options = {{"kernel", 1}};
  expect_error<ValueError>([&] { make_mechanism("aft_conv", c); }, {"kernel = 1", "reparam"});
  c.options = {{"heads", 3}};
  expect_error<ValueError>([&] { make_mechanism("aft_full", c); }, {"not divisible", "3"});
  c.options = {{"window", 2}};
  expect_error<ValueError>([&] { make_mechanism("aft_full", c); },
                           {"unknown option 'window'", "factorized, hidden"});
  c.max_len = 0, c.options = nlohmann::json::object();
  expect_error<ValueError>([&] { make_mechanism("aft_full", c); }, {"fixed-length", "max_len"});
  c.max_len = 16;
  auto mech = make_mechanism("aft_local", c);
  expect_error<ValueError>([&] { mech->forward(Tensor::zeros({1, 17, 8})); }, {"length 17", "max_len = 16"});
  c.dropout = 0.1f;
  expect_error<ValueError>([&] { make_mechanism("aft_simple", c); }, {"no attention probabilities"});

  Tensor q = Tensor::zeros({1, 2, 5, 4});
  AttentionOptions opts;
  expect_error<ValueError>([&] { attention(q, q, q, "aft_full", opts, {}); }, {"w [heads, N, M]", "w_u"});
  expect_error<ShapeError>(
      [&] {
        attention(q, q, q, "aft_full", opts, with_w(Tensor::zeros({2, 4, 5})));
      },
      {"w is", "[2, 4, 5]", ">= 5"});
  expect_error<ShapeError>(
      [&] {
        attention(q, q, q, "aft_local", opts, with_w(Tensor::zeros({2, 5, 4})));
      },
      {"band", "odd"});
  expect_error<ShapeError>(
      [&] {
        attention(q, q, q, "aft_conv", opts, with_w(Tensor::zeros({3, 4})));
      },
      {"kernel [heads, S]", "[3, 4]"});
  expect_error<ValueError>(
      [&] {
        attention(q, q, q, "aft_simple", opts, with_w(Tensor::zeros({2, 4})));
      },
      {"unknown tensor argument 'w'"});
  opts.key_mask = Tensor::zeros({1, 4}, DType::Bool);
  expect_error<ShapeError>([&] { attention(q, q, q, "aft_simple", opts, {}); }, {"key_mask is", "[1, 5]"});
  opts = {};
  expect_error<ShapeError>(
      [&] {
        attention(q, q, Tensor::zeros({1, 2, 5, 3}), "aft_simple", opts, {});
      },
      {"v is", "[1, 2, 5, 3]"});
}

}  // namespace
}  // namespace eformer::attention
