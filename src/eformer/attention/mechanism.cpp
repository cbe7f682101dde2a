#include "eformer/attention/mechanism.h"

namespace eformer::attention {

std::unique_ptr<RecurrentState> Mechanism::start(int64_t batch) const {
  throw ValueError(
      detail::concat(describe(), ": no recurrent step (streaming generation) for this mechanism"));
}

Tensor Mechanism::step(const Tensor& x_t, RecurrentState& state) {
  throw ValueError(
      detail::concat(describe(), ": no recurrent step (streaming generation) for this mechanism"));
}

}  // namespace eformer::attention
