// ListOps (Nangia & Bowman 2018) as generated for Long Range Arena (Tay et al. 2020): nested
// prefix expressions over the digits 0..9 with the operators MAX, MIN, MED (median, rounded down)
// and SM (sum modulo 10), e.g. "[MAX 2 9 [MIN 4 7 ] 0 ]" = 9. The label is the value, 10 classes.
//
// The grammar is LRA's generator's: a node at depth d < max_depth is an operator with probability
// 1/4 (else a digit); depth max_depth is always a digit; an operator takes 2..max_args arguments
// (uniform), each a node at depth d + 1; operator and digits are uniform. The root is at depth 1.
// The length counts tokens: a digit is 1, an operator node 2 (its name and "]") plus its arguments.
// LRA keeps trees with min_length < length < max_length (500 and 2000).
//
// Here example `index` is a pure function of (seed, index): its label is index mod 10 (so the
// classes are balanced and chance is 10%), and trees are drawn from the stream
// (seed, kListOpsStream + index) (draws.h) until one has a length in range and that value. LRA's
// own sets are not balanced; this conditions its tree distribution on the value, nothing else.
//
// Tokens (LRA drops the parentheses of its text form, as here): 0 padding, 1 + v for the digit v,
// 11 MIN, 12 MAX, 13 MED, 14 SM, 15 "]".
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace eformer::data {

inline constexpr uint64_t kListOpsStream = uint64_t(0x7157) << 48;
inline constexpr int64_t kListOpsVocab = 16;
inline constexpr int64_t kListOpsClasses = 10;

struct ListOpsOptions {
  int64_t min_length = 500;  // exclusive, as LRA's generator
  int64_t max_length = 2000; // exclusive
  int64_t max_depth = 10;
  int64_t max_args = 10;
};
// ValueError unless 0 <= min_length, min_length + 2 <= max_length <= 2^20, 1 <= max_depth <= 64,
// 2 <= max_args <= 64.
void validate(const ListOpsOptions& options);

struct ListOpsExample {
  std::vector<int64_t> tokens;
  int64_t label = 0;
};

// ValueError naming the options when 10^6 draws give no tree of the required length and value.
ListOpsExample listops_example(uint64_t seed, uint64_t index, const ListOpsOptions& options = {});

// The value of a token sequence (padding ignored); ValueError naming the position when it is not
// one well-formed expression.
int64_t listops_evaluate(const std::vector<int64_t>& tokens);
// Whitespace-separated text ("[MAX 2 9 ]"; "(" and ")" are dropped, as LRA's pipeline does) to
// tokens; ValueError naming an unknown word.
std::vector<int64_t> listops_tokenize(std::string_view text);
std::string listops_text(const std::vector<int64_t>& tokens);

}  // namespace eformer::data
