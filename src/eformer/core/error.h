// Errors: one hierarchy. Messages name the argument, the value and what was expected.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace eformer {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A tensor shape (or dtype) that does not fit the operation.
class ShapeError : public Error {
 public:
  using Error::Error;
};
// An argument, option or config value outside what is valid.
class ValueError : public Error {
 public:
  using Error::Error;
};
// An index out of range (gather/scatter/embedding ids, dims).
class IndexError : public Error {
 public:
  using Error::Error;
};
// A file that cannot be read or written, or whose contents are corrupt.
class IOError : public Error {
 public:
  using Error::Error;
};
// An allocation the machine cannot satisfy (the allocator's, or a run's memory estimate).
class MemoryError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace eformer

// EF_CHECK(cond, ShapeError, "matmul: a has ", a.dim(), " dims; expected 2")
#define EF_CHECK(cond, Kind, ...)                                    \
  do {                                                               \
    if (!(cond)) throw ::eformer::Kind(::eformer::detail::concat(__VA_ARGS__)); \
  } while (0)
