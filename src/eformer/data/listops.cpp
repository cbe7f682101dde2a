#include "eformer/data/listops.h"

#include <algorithm>
#include <sstream>

#include "eformer/core/error.h"
#include "eformer/data/draws.h"

namespace eformer::data {
namespace {

constexpr int64_t kPad = 0, kMin = 11, kMax = 12, kMed = 13, kSumMod = 14, kEnd = 15;
constexpr const char* kOperatorNames[] = {"[MIN", "[MAX", "[MED", "[SM"};
constexpr int64_t kMaxDraws = 1000000;

bool is_operator(int64_t t) { return t >= kMin && t <= kSumMod; }

// Appends one node at `depth` (LRA's generate_tree); false as soon as the tokens reach `limit`
// (the tree is rejected anyway, so it is not finished).
bool append_tree(Draws& draws, int64_t depth, const ListOpsOptions& o, int64_t limit, std::vector<int64_t>& out) {
  const bool leaf = depth >= o.max_depth || draws.uniform() >= 0.25;
  if (leaf) {
    out.push_back(1 + draws.below(10));
    return int64_t(out.size()) < limit;
  }
  const int64_t args = 2 + draws.below(o.max_args - 1);
  std::vector<int64_t>::size_type op_at = out.size();
  out.push_back(kPad);  // the operator, drawn after its arguments as LRA does
  for (int64_t a = 0; a < args; ++a)
    if (!append_tree(draws, depth + 1, o, limit, out)) return false;
  out[op_at] = kMin + draws.below(4);
  out.push_back(kEnd);
  return int64_t(out.size()) < limit;
}

int64_t apply(int64_t op, std::vector<int64_t>& args) {
  switch (op) {
    case kMin: return *std::min_element(args.begin(), args.end());
    case kMax: return *std::max_element(args.begin(), args.end());
    case kMed: {  // numpy's median, then int(): the mean of the middle two, rounded down
      std::sort(args.begin(), args.end());
      size_t n = args.size();
      return n % 2 ? args[n / 2] : (args[n / 2 - 1] + args[n / 2]) / 2;
    }
    default: {
      int64_t s = 0;
      for (int64_t v : args) s += v;
      return s % 10;
    }
  }
}

}  // namespace

void validate(const ListOpsOptions& o) {
  EF_CHECK(o.min_length >= 0 && o.min_length + 2 <= o.max_length && o.max_length <= (int64_t(1) << 20), ValueError,
           "listops: lengths must satisfy 0 <= min_length and min_length + 2 <= max_length <= 2^20 (both "
           "exclusive), got min_length ",
           o.min_length, ", max_length ", o.max_length);
  EF_CHECK(o.max_depth >= 1 && o.max_depth <= 64, ValueError, "listops: max_depth must be 1..64, got ", o.max_depth);
  EF_CHECK(o.max_args >= 2 && o.max_args <= 64, ValueError, "listops: max_args must be 2..64, got ", o.max_args);
}

ListOpsExample listops_example(uint64_t seed, uint64_t index, const ListOpsOptions& o) {
  validate(o);
  ListOpsExample ex;
  ex.label = int64_t(index % uint64_t(kListOpsClasses));
  Draws draws(seed, kListOpsStream + index);
  for (int64_t attempt = 0; attempt < kMaxDraws; ++attempt) {
    ex.tokens.clear();
    if (!append_tree(draws, 1, o, o.max_length, ex.tokens)) continue;
    if (int64_t(ex.tokens.size()) <= o.min_length) continue;
    if (listops_evaluate(ex.tokens) == ex.label) return ex;
  }
  throw ValueError("listops: no tree of length in (" + std::to_string(o.min_length) + ", " +
                   std::to_string(o.max_length) + ") with value " + std::to_string(ex.label) + " in " +
                   std::to_string(kMaxDraws) + " draws (max_depth " + std::to_string(o.max_depth) + ", max_args " +
                   std::to_string(o.max_args) + "); widen the length range or raise max_depth");
}

int64_t listops_evaluate(const std::vector<int64_t>& tokens) {
  // A stack of open operators, each with the values of its arguments so far.
  std::vector<std::pair<int64_t, std::vector<int64_t>>> open;
  int64_t result = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t t = tokens[i];
    if (t == kPad) continue;
    EF_CHECK(result < 0, ValueError, "listops_evaluate: token ", t, " at position ", i,
             " follows a complete expression");
    EF_CHECK(t > kPad && t <= kEnd, ValueError, "listops_evaluate: token ", t, " at position ", i,
             " is outside [0, ", kListOpsVocab, ")");
    int64_t value = -1;
    if (is_operator(t)) {
      open.push_back({t, {}});
      continue;
    }
    if (t == kEnd) {
      EF_CHECK(!open.empty(), ValueError, "listops_evaluate: ']' at position ", i, " closes no operator");
      EF_CHECK(!open.back().second.empty(), ValueError, "listops_evaluate: the operator closed at position ", i,
               " has no arguments");
      value = apply(open.back().first, open.back().second);
      open.pop_back();
    } else {
      value = t - 1;
    }
    if (open.empty()) result = value;
    else open.back().second.push_back(value);
  }
  EF_CHECK(open.empty(), ValueError, "listops_evaluate: ", open.size(), " operator(s) left open at the end");
  EF_CHECK(result >= 0, ValueError, "listops_evaluate: no expression (only padding)");
  return result;
}

std::vector<int64_t> listops_tokenize(std::string_view text) {
  std::vector<int64_t> tokens;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) {
    if (word == "(" || word == ")") continue;
    if (word.size() == 1 && word[0] >= '0' && word[0] <= '9') {
      tokens.push_back(1 + (word[0] - '0'));
      continue;
    }
    if (word == "]") {
      tokens.push_back(kEnd);
      continue;
    }
    auto it = std::find(std::begin(kOperatorNames), std::end(kOperatorNames), word);
    EF_CHECK(it != std::end(kOperatorNames), ValueError, "listops_tokenize: unknown word '", word,
             "'; expected a digit 0-9, [MIN, [MAX, [MED, [SM or ]");
    tokens.push_back(kMin + (it - std::begin(kOperatorNames)));
  }
  return tokens;
}

std::string listops_text(const std::vector<int64_t>& tokens) {
  std::string out;
  for (int64_t t : tokens) {
    if (t == kPad) continue;
    EF_CHECK(t > kPad && t <= kEnd, ValueError, "listops_text: token ", t, " is outside [0, ", kListOpsVocab, ")");
    if (!out.empty()) out += ' ';
    if (t <= 10) out += char('0' + t - 1);
    else if (t == kEnd) out += ']';
    else out += kOperatorNames[t - kMin];
  }
  return out;
}

}  // namespace eformer::data
