// Uses the installed package: a tiny forward and backward through the public header.
#include <cmath>
#include <iostream>

#include "eformer/eformer.h"

int main() {
  using namespace eformer;
  Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
  set_requires_grad(a, true);
  Tensor loss = sum(matmul(a, a));
  backward(loss);
  // d/da sum(a a) = 1 a^T + a^T 1: row sums and column sums.
  std::vector<float> g = grad(a).to_vector();
  bool ok = loss.item() == 54.f && g == std::vector<float>{7, 11, 9, 13};
  std::cout << "consumer: eformer " << kVersion << (ok ? " ok" : " WRONG") << "\n";
  return ok ? 0 : 1;
}
