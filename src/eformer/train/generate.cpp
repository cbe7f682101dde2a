#include "eformer/train/generate.h"

#include "eformer/data/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"

namespace eformer::train {

void validate(const SamplingOptions& o) {
  EF_CHECK(std::isfinite(o.temperature) && o.temperature >= 0, ValueError,
           "generate: temperature must be >= 0 (0: greedy), got ", o.temperature);
  EF_CHECK(o.top_k >= 0, ValueError, "generate: top_k must be >= 0 (0: off), got ", o.top_k);
  EF_CHECK(std::isfinite(o.top_p) && o.top_p > 0 && o.top_p <= 1, ValueError,
           "generate: top_p must be in (0, 1] (1: off), got ", o.top_p);
}

std::vector<double> sampling_distribution(const float* logits, int64_t vocab, const SamplingOptions& o) {
  validate(o);
  EF_CHECK(vocab >= 1, ValueError, "generate: empty vocabulary");
  for (int64_t i = 0; i < vocab; ++i)
    EF_CHECK(!std::isnan(logits[i]), ValueError, "generate: logit ", i, " is NaN");
  std::vector<double> p(static_cast<size_t>(vocab), 0.0);
  if (o.temperature == 0.0) {
    p[size_t(std::max_element(logits, logits + vocab) - logits)] = 1.0;  // first of equal maxima
    return p;
  }
  std::vector<bool> keep(static_cast<size_t>(vocab), true);
  if (o.top_k > 0 && o.top_k < vocab) {
    std::vector<float> sorted(logits, logits + vocab);
    std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(), std::greater<float>());
    float kth = sorted[size_t(o.top_k - 1)];
    for (int64_t i = 0; i < vocab; ++i) keep[size_t(i)] = logits[i] >= kth;
  }
  double m = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i)
    if (keep[size_t(i)]) m = std::max(m, double(logits[i]));
  if (std::isinf(m)) {  // every kept logit is -inf (or +inf): fall back to the argmax
    p[size_t(std::max_element(logits, logits + vocab) - logits)] = 1.0;
    return p;
  }
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i)
    if (keep[size_t(i)]) total += p[size_t(i)] = std::exp((double(logits[i]) - m) / o.temperature);
  for (double& x : p) x /= total;
  if (o.top_p < 1.0) {
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double cum = 0.0;
    size_t n_keep = 0;
    while (n_keep < order.size() && p[size_t(order[n_keep])] > 0) {
      cum += p[size_t(order[n_keep++])];
      if (cum >= o.top_p) break;
    }
    n_keep = std::max<size_t>(n_keep, 1);
    double kept = 0.0;
    for (size_t r = 0; r < order.size(); ++r) {
      if (r < n_keep) kept += p[size_t(order[r])];
      else p[size_t(order[r])] = 0.0;
    }
    for (double& x : p) x /= kept;
  }
  return p;
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), gen_(options.seed, 0) { validate(options); }

int64_t Sampler::next(const float* logits, int64_t vocab) {
  std::vector<double> p = sampling_distribution(logits, vocab, options_);
  uint64_t c = gen_.reserve(1);  // reserved even when greedy, so the stream position counts tokens
  if (options_.temperature == 0.0) return int64_t(std::max_element(p.begin(), p.end()) - p.begin());
  auto w = rng::philox(gen_.state().seed, gen_.state().stream, c);
  // A 53-bit uniform in [0, 1) from two 32-bit words.
  double u = double((uint64_t(w[0]) << 21) ^ (uint64_t(w[1]) >> 11)) * (1.0 / 9007199254740992.0);
  double cum = 0.0;
  int64_t last = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (p[size_t(i)] <= 0) continue;
    last = i;
    cum += p[size_t(i)];
    if (u < cum) return i;
  }
  return last;  // rounding left u >= the total: the last token with probability
}

std::vector<int64_t> generate(models::LanguageModel& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options, const std::function<bool(int64_t)>& on_token) {
  validate(options.sampling);
  EF_CHECK(options.max_new_tokens >= 0, ValueError, "generate: max_new_tokens must be >= 0, got ",
           options.max_new_tokens);
  const int64_t max_len = model.config().max_len, vocab = model.config().vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i)
    EF_CHECK(prompt[i] >= 0 && prompt[i] < vocab, IndexError, "generate: prompt token ", i, " is ", prompt[i],
             "; expected an id in [0, ", vocab, ")");
  EF_CHECK(options.mem_len >= 0 && (options.mem_len == 0 || model.has_memory()), ValueError,
           "generate: mem_len = ", options.mem_len, "; expected 0, or >= 1 for a model with a memory");
  const bool memory = model.has_memory();
  std::vector<int64_t> all = prompt.empty() ? std::vector<int64_t>{'\n'} : prompt;
  if (!memory && int64_t(all.size()) > max_len) all.erase(all.begin(), all.end() - max_len);
  std::vector<int64_t> out;
  if (options.max_new_tokens == 0) return out;

  const bool was_training = model.is_training();
  model.eval();
  struct Restore {
    models::LanguageModel& m;
    bool training;
    ~Restore() { m.train(training); }
  } restore{model, was_training};
  autograd::NoGradGuard no_grad;
  Sampler sampler(options.sampling);

  models::DecodeState state;
  int64_t in_context = 0;
  std::vector<float> row(static_cast<size_t>(vocab));
  auto feed = [&](const std::vector<int64_t>& ids) {
    Tensor logits = model.step(state, Tensor::from_vector(ids, {1, int64_t(ids.size())})).contiguous_data();
    const float* last = logits.data<float>() + (int64_t(ids.size()) - 1) * vocab;
    std::copy(last, last + vocab, row.begin());
    in_context += int64_t(ids.size());
  };
  auto restart = [&](int64_t keep) {
    state = model.start_decoding(1, options.mem_len);
    in_context = 0;
    feed(std::vector<int64_t>(all.end() - keep, all.end()));
  };
  restart(int64_t(all.size()));
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    int64_t token = sampler.next(row.data(), vocab);
    out.push_back(token);
    all.push_back(token);
    // A restart re-encodes at most max_len tokens: keep a window of them, not the whole history.
    if (int64_t(all.size()) >= 2 * max_len) all.erase(all.begin(), all.end() - max_len);  // (memory: unused)
    if (on_token && !on_token(token)) break;
    if (i + 1 == options.max_new_tokens) break;
    if (!memory && in_context >= max_len) {
      if (options.on_full == ContextPolicy::Stop) break;
      restart(std::max<int64_t>(1, max_len / 2));
    } else {
      feed({token});
    }
  }
  return out;
}

std::string generate_text(models::LanguageModel& model, const std::string& prompt, const GenerateOptions& options,
                          const std::function<bool(int64_t)>& on_token) {
  EF_CHECK(model.config().vocab_size == data::ByteTokenizer::kVocabSize, ValueError,
           "generate_text: text is bytes, so the model's vocab_size must be ", data::ByteTokenizer::kVocabSize,
           ", got ", model.config().vocab_size, "; use generate() with token ids");
  std::vector<int64_t> ids(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) ids[i] = int64_t(uint8_t(prompt[i]));
  std::vector<int64_t> out = generate(model, ids, options, on_token);
  std::string text(out.size(), '\0');
  for (size_t i = 0; i < out.size(); ++i) text[i] = char(uint8_t(out[i]));
  return text;
}

}  // namespace eformer::train
