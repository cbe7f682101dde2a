#include "eformer/core/parallel.h"

#include <omp.h>

#include "eformer/core/error.h"

namespace eformer::parallel {

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  EF_CHECK(n >= 1, ValueError, "set_num_threads: n = ", n, "; expected at least 1");
  omp_set_num_threads(n);
}

}  // namespace eformer::parallel
