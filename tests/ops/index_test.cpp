// Error cases and thread-count determinism of select, cumsum, gather/scatter/sort, depthwise
// conv1d and embedding. Numerical parity with PyTorch lives in tests/python/test_ops_index.py.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "eformer/eformer.h"

namespace eformer {
namespace {

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  std::vector<float> v(size_t(numel_of(shape)));
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (float& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = float(int64_t(s >> 40) % 2001 - 1000) / 317.0f;
  }
  return Tensor::from_vector(v, shape);
}

Tensor random_ids(const Shape& shape, int64_t bound, uint64_t seed) {
  std::vector<int64_t> v(size_t(numel_of(shape)));
  uint64_t s = seed;
  for (int64_t& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = int64_t((s >> 33) % uint64_t(bound));
  }
  return Tensor::from_vector(v, shape);
}

Tensor leaf(const Tensor& t) {
  Tensor out = t.clone_data();
  set_requires_grad(out, true);
  return out;
}

// The message of the exception `fn` throws as `E`, or "" when it throws nothing.
template <class E>
std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

// Runs fn (forward + backward, returning the tensors to compare) on 1 and on 2 and 3 threads.
void expect_thread_independent(const std::function<std::vector<Tensor>()>& fn) {
  const int saved = parallel::num_threads();
  parallel::set_num_threads(1);
  std::vector<Tensor> one = fn();
  for (int threads : {2, 3}) {
    parallel::set_num_threads(threads);
    std::vector<Tensor> many = fn();
    ASSERT_EQ(one.size(), many.size());
    for (size_t i = 0; i < one.size(); ++i)
      EXPECT_EQ(one[i].to_vector(), many[i].to_vector()) << "output " << i << " on " << threads << " threads";
  }
  parallel::set_num_threads(saved);
}

TEST(IndexOps, GatherAndScatterRejectOutOfRangeIndices) {
  Tensor x = Tensor::zeros({3, 4});
  std::string msg = message_of<IndexError>([&] {
    gather(x, 1, Tensor::from_vector(std::vector<int64_t>{0, 9}, {1, 2}));
  });
  EXPECT_NE(msg.find("index 9"), std::string::npos) << msg;
  EXPECT_NE(msg.find("size 4"), std::string::npos) << msg;
  msg = message_of<IndexError>([&] {
    scatter_add(x, 0, Tensor::from_vector(std::vector<int64_t>{-2}, {1, 1}), Tensor::zeros({1, 1}));
  });
  EXPECT_NE(msg.find("index -2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("size 3"), std::string::npos) << msg;
  EXPECT_THROW(gather(x, 2, Tensor::zeros({3, 4}, DType::Int64)), IndexError);
  EXPECT_THROW(gather(x, 1, Tensor::zeros({3, 4})), ShapeError);                // float index
  EXPECT_THROW(gather(x, 1, Tensor::zeros({3}, DType::Int64)), ShapeError);     // wrong rank
  EXPECT_THROW(gather(x, 1, Tensor::zeros({4, 1}, DType::Int64)), ShapeError);  // too large on dim 0
  EXPECT_THROW(scatter_add(x, 0, Tensor::zeros({2, 2}, DType::Int64), Tensor::zeros({1, 2})), ShapeError);
  EXPECT_THROW(argsort(Tensor::zeros({3}, DType::Int64)), ShapeError);
}

TEST(IndexOps, SelectAndCumsumCheckTheirArguments) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THROW(masked_fill(x, Tensor::zeros({2, 3}), 1.0f), ShapeError);            // float mask
  EXPECT_THROW(masked_fill(x, Tensor::zeros({4}, DType::Bool), 1.0f), ShapeError);  // not broadcastable
  EXPECT_THROW(where(Tensor::zeros({2, 3}, DType::Int64), x, x), ShapeError);
  EXPECT_THROW(where(Tensor::zeros({2, 3}, DType::Bool), x, Tensor::zeros({2})), ShapeError);
  EXPECT_THROW(cumsum(x, 2), IndexError);
  EXPECT_THROW(cumsum(Tensor::zeros({2}, DType::Int64), 0), ShapeError);
  EXPECT_THROW(logcumsumexp(x, -3), IndexError);
  EXPECT_THROW(logcumsumexp(Tensor::zeros({2}, DType::Int64), 0), ShapeError);
}

TEST(IndexOps, Conv1dAndEmbeddingCheckTheirArguments) {
  Tensor x = Tensor::zeros({2, 5, 3});
  EXPECT_THROW(depthwise_conv1d(x, Tensor::zeros({4, 3})), ShapeError);
  EXPECT_THROW(depthwise_conv1d(x, Tensor::zeros({3, 0})), ShapeError);
  EXPECT_THROW(depthwise_conv1d(x, Tensor::zeros({3, 2}), Tensor::zeros({2})), ShapeError);
  EXPECT_THROW(depthwise_conv1d(Tensor::zeros({5, 3}), Tensor::zeros({3, 2})), ShapeError);
  Tensor w = Tensor::zeros({4, 2});
  std::string msg = message_of<IndexError>([&] {
    embedding(Tensor::from_vector(std::vector<int64_t>{1, 7}, {2}), w);
  });
  EXPECT_NE(msg.find("id 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("V=4"), std::string::npos) << msg;
  EXPECT_THROW(embedding(Tensor::zeros({2}), w), ShapeError);
  EXPECT_THROW(embedding(Tensor::zeros({2}, DType::Int64), Tensor::zeros({4})), ShapeError);
}

TEST(IndexOps, SmallExamples) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {4});
  EXPECT_EQ(cumsum(x, 0).to_vector(), (std::vector<float>{1, 3, 6, 10}));
  EXPECT_EQ(cumsum(x, 0, true).to_vector(), (std::vector<float>{10, 9, 7, 4}));
  // Past exp's float range: log(e^1000 + e^1000) = 1000 + ln 2.
  Tensor big = Tensor::from_vector(std::vector<float>{1000, 1000, -1e30f}, {3});
  const std::vector<float> lse = logcumsumexp(big, 0).to_vector();
  EXPECT_FLOAT_EQ(lse[0], 1000.f);
  EXPECT_FLOAT_EQ(lse[1], 1000.f + std::log(2.f));
  EXPECT_FLOAT_EQ(lse[2], lse[1]);
  Tensor ties = Tensor::from_vector(std::vector<float>{2, 1, 2, 1, 0}, {5});
  EXPECT_EQ(argsort(ties).to_int_vector(), (std::vector<int64_t>{4, 1, 3, 0, 2}));
  EXPECT_EQ(argsort(ties, 0, true).to_int_vector(), (std::vector<int64_t>{0, 2, 1, 3, 4}));
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{0, 0, 3}, {3});
  Tensor out = scatter_add(Tensor::zeros({4}), 0, idx, Tensor::from_vector(std::vector<float>{1, 2, 5}, {3}));
  EXPECT_EQ(out.to_vector(), (std::vector<float>{3, 0, 0, 5}));
  // causal K=2: out[t] = w[c,1] x[t] + w[c,0] x[t-1]
  Tensor seq = Tensor::from_vector(std::vector<float>{1, 2, 3}, {1, 3, 1});
  Tensor w = Tensor::from_vector(std::vector<float>{10, 1}, {1, 2});
  EXPECT_EQ(depthwise_conv1d(seq, w, Tensor(), true).to_vector(), (std::vector<float>{1, 12, 23}));
  // centred K=2 puts the extra padding on the right: out[t] = w[c,0] x[t] + w[c,1] x[t+1]
  EXPECT_EQ(depthwise_conv1d(seq, w, Tensor(), false).to_vector(), (std::vector<float>{12, 23, 30}));
}

TEST(IndexOps, ScatterAndGatherAreThreadIndependent) {
  const Tensor x0 = random_tensor({6, 40, 300}, 1), src0 = random_tensor({6, 500, 300}, 2);
  const Tensor index = random_ids({6, 500, 300}, 40, 3);  // every slot receives many contributions
  const Tensor up = random_tensor({6, 40, 300}, 4);
  expect_thread_independent([&] {
    Tensor x = leaf(x0), src = leaf(src0);
    Tensor out = scatter_add(x, 1, index, src);
    backward(out, up);
    Tensor xs = leaf(x0);
    Tensor gathered = gather(xs, 1, index);
    backward(gathered, src0);  // gather's backward is a scatter too
    return std::vector<Tensor>{out, grad(x), grad(src), gathered, grad(xs)};
  });
  const Tensor row_index = random_ids({2000, 1}, 7, 5);  // inner == 1: one column, many rows
  const Tensor row_src = random_tensor({2000, 1}, 6);
  expect_thread_independent([&] {
    return std::vector<Tensor>{scatter_add(Tensor::zeros({7, 1}), 0, row_index, row_src)};
  });
}

TEST(IndexOps, EmbeddingConvCumsumSelectAreThreadIndependent) {
  const Tensor ids = random_ids({8, 700}, 50, 7), table = random_tensor({50, 64}, 8);
  const Tensor up_e = random_tensor({8, 700, 64}, 9);
  const Tensor x0 = random_tensor({4, 900, 48}, 10), w0 = random_tensor({48, 4}, 11),
               b0 = random_tensor({48}, 12);
  const Tensor up_c = random_tensor({4, 900, 48}, 13);
  expect_thread_independent([&] {
    Tensor w = leaf(table);
    Tensor e = embedding(ids, w);
    backward(e, up_e);
    Tensor x = leaf(x0), cw = leaf(w0), cb = leaf(b0);
    Tensor c = depthwise_conv1d(x, cw, cb, true);
    backward(c, up_c);
    Tensor xc = leaf(x0);
    Tensor cs = cumsum(xc, 1, false);
    backward(cs, up_c);
    Tensor xm = leaf(x0);
    Tensor mask = Tensor::zeros({900, 1}, DType::Bool);
    Tensor m = masked_fill(xm, mask, -1.0f);
    backward(m, up_c);
    return std::vector<Tensor>{e, grad(w), c, grad(x), grad(cw), grad(cb), cs, grad(xc), m, grad(xm)};
  });
}

}  // namespace
}  // namespace eformer
