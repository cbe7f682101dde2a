// The causal streaming step of Sparse Sinkhorn attention (mechanisms/sinkhorn.h). Row i of the causal
// balancing depends on rows k <= i only, through the column sums sum_{k<=i} exp(X_kj) of each iteration:
// kept as running sums, they let a new block compute its row of P alone, in the parallel pass's order.
#include <cmath>
#include <vector>

#include "eformer/attention/mechanisms/sinkhorn.h"

namespace eformer::attention {
namespace {

// Per (sequence, head): every key and value so far, the running column log-sums [iterations, n_max] of the
// rows before the current block, and the current block's sorted keys and values [block, d].
struct SinkhornStream {
  std::vector<float> k, v, column_lse, sorted_k, sorted_v;
  bool has_sorted = false;
};
struct SinkhornState : RecurrentState {
  std::vector<SinkhornStream> streams;  // [B, H]
  int64_t tokens = 0;
  int64_t length() const override { return tokens; }
};

struct Network {
  const float *w1, *b1, *w2, *b2;
  int64_t d, hidden, n_max;
};

// Row i >= 1 of the causal balancing (sinkhorn_balance) and the sorted block sum_{j<i} P_ij K_j.
void start_block(SinkhornStream& s, const Network& net, int64_t h, int64_t i, int64_t block,
                 int64_t iterations, float inv_temperature) {
  const int64_t d = net.d;
  std::vector<float> summary(static_cast<size_t>(d), 0.0f), hidden(static_cast<size_t>(net.hidden));
  std::vector<float> x(static_cast<size_t>(i)), fresh(static_cast<size_t>(i));
  for (int64_t t = 0; t < block; ++t)  // psi of block i - 1
    for (int64_t c = 0; c < d; ++c) summary[size_t(c)] += s.k[size_t(((i - 1) * block + t) * d + c)];
  for (int64_t e = 0; e < net.hidden; ++e) {
    float acc = 0.0f;
    for (int64_t c = 0; c < d; ++c) acc += summary[size_t(c)] * net.w1[(h * d + c) * net.hidden + e];
    hidden[size_t(e)] = std::max(0.0f, acc + net.b1[h * net.hidden + e]);
  }
  for (int64_t j = 0; j < i; ++j) {
    float acc = 0.0f;
    for (int64_t e = 0; e < net.hidden; ++e)
      acc += hidden[size_t(e)] * net.w2[(h * net.hidden + e) * net.n_max + j];
    x[size_t(j)] = (acc + net.b2[h * net.n_max + j]) * inv_temperature;
  }
  for (int64_t it = 0; it < iterations; ++it) {
    float* column = s.column_lse.data() + it * net.n_max;
    float m = -INFINITY;
    for (int64_t j = 0; j < i; ++j) {  // causal column step, then the running log-sums for later rows
      const float a = std::max(column[j], x[size_t(j)]), b = std::min(column[j], x[size_t(j)]);
      column[j] = b == -INFINITY ? a : a + std::log1p(std::exp(b - a));  // log(exp(column) + exp(x))
      fresh[size_t(j)] = x[size_t(j)] - column[j];
      m = std::max(m, fresh[size_t(j)]);
    }
    float total = 0.0f;  // the row step: log_softmax over j < i
    for (int64_t j = 0; j < i; ++j) total += std::exp(fresh[size_t(j)] - m);
    const float lse = m + std::log(total);
    for (int64_t j = 0; j < i; ++j) x[size_t(j)] = fresh[size_t(j)] - lse;
  }
  s.sorted_k.assign(size_t(block * d), 0.0f);
  s.sorted_v.assign(size_t(block * d), 0.0f);
  for (int64_t j = 0; j < i; ++j) {
    const float p = std::exp(x[size_t(j)]);
    for (int64_t e = 0; e < block * d; ++e) {
      s.sorted_k[size_t(e)] += p * s.k[size_t(j * block * d + e)];
      s.sorted_v[size_t(e)] += p * s.v[size_t(j * block * d + e)];
    }
  }
  s.has_sorted = true;
}

// One query q [d] at position p: softmax over the sorted block's slots and the own block's keys <= p.
void attend(const SinkhornStream& s, const float* q, int64_t p, int64_t block, int64_t d, float scale,
            float* o) {
  const int64_t own = (p / block) * block;
  std::vector<float> w;
  std::vector<const float*> values;
  auto add = [&](const float* key, const float* value) {
    float dot = 0.0f;
    for (int64_t c = 0; c < d; ++c) dot += q[c] * key[c];
    w.push_back(scale * dot);
    values.push_back(value);
  };
  if (s.has_sorted)
    for (int64_t t = 0; t < block; ++t) add(&s.sorted_k[size_t(t * d)], &s.sorted_v[size_t(t * d)]);
  for (int64_t j = own; j <= p; ++j) add(&s.k[size_t(j * d)], &s.v[size_t(j * d)]);
  float m = -INFINITY, total = 0.0f;
  for (float x : w) m = std::max(m, x);
  for (float& x : w) total += (x = std::exp(x - m));
  std::fill(o, o + d, 0.0f);
  for (size_t e = 0; e < w.size(); ++e)
    for (int64_t c = 0; c < d; ++c) o[c] += w[e] / total * values[e][c];
}

}  // namespace

std::unique_ptr<RecurrentState> SinkhornAttention::start_native(int64_t batch) const {
  auto state = std::make_unique<SinkhornState>();
  state->streams.resize(size_t(batch * H_));
  for (SinkhornStream& s : state->streams)
    s.column_lse.assign(size_t(options_.iterations * net_.w2.size(2)), -INFINITY);
  return state;
}

Tensor SinkhornAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& st = static_cast<SinkhornState&>(state);
  const Heads h = project_step(x_t, st.tokens);
  const Tensor q = h.q.contiguous_data(), k = h.k.contiguous_data(), v = h.v.contiguous_data();
  const int64_t B = q.size(0), T = q.size(2), d = d_, block = options_.block;
  const Tensor w1 = net_.w1.contiguous_data(), b1 = net_.b1.contiguous_data(), w2 = net_.w2.contiguous_data(),
               b2 = net_.b2.contiguous_data();
  const Network net{w1.data<float>(), b1.data<float>(), w2.data<float>(), b2.data<float>(), d,
                    net_.w1.size(2),  net_.w2.size(2)};
  const float scale = 1.0f / std::sqrt(float(d)), inv_temperature = float(1.0 / options_.temperature);
  Tensor out = Tensor::empty({B, H_, T, d});
  for (int64_t bh = 0; bh < B * H_; ++bh) {
    SinkhornStream& s = st.streams[size_t(bh)];
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = st.tokens + t, row = (bh * T + t) * d;
      s.k.insert(s.k.end(), k.data<float>() + row, k.data<float>() + row + d);
      s.v.insert(s.v.end(), v.data<float>() + row, v.data<float>() + row + d);
      if (p % block == 0 && p > 0)
        start_block(s, net, bh % H_, p / block, block, options_.iterations, inv_temperature);
      attend(s, q.data<float>() + row, p, block, d, scale, out.data<float>() + row);
    }
  }
  st.tokens += T;
  return output(out);
}

}  // namespace eformer::attention
