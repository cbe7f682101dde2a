#include "eformer/ops/embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer {
namespace kernels {

void embedding_forward(const int64_t* ids, const float* weight, float* out, int64_t n, int64_t V, int64_t D) {
  parallel::parallel_for(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)),
                         [&](int64_t p0, int64_t p1) {
                           for (int64_t p = p0; p < p1; ++p)
                             std::memcpy(out + p * D, weight + ids[p] * D, sizeof(float) * size_t(D));
                         });
}

void embedding_backward(const float* g, const int64_t* ids, float* dweight, int64_t n, int64_t V, int64_t D) {
  // Counting sort of the positions by id (stable), then each thread owns a range of vocabulary rows.
  std::vector<int64_t> start(size_t(V + 1), 0), order(static_cast<size_t>(n));
  for (int64_t p = 0; p < n; ++p) ++start[size_t(ids[p]) + 1];
  for (int64_t v = 0; v < V; ++v) start[size_t(v) + 1] += start[size_t(v)];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t p = 0; p < n; ++p) order[size_t(fill[size_t(ids[p])]++)] = p;
  parallel::parallel_for(V, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)),
                         [&](int64_t v0, int64_t v1) {
                           for (int64_t v = v0; v < v1; ++v) {
                             float* pw = dweight + v * D;
                             std::fill_n(pw, D, 0.0f);
                             for (int64_t q = start[size_t(v)]; q < start[size_t(v) + 1]; ++q) {
                               const float* pg = g + order[size_t(q)] * D;
                               for (int64_t d = 0; d < D; ++d) pw[d] += pg[d];
                             }
                           }
                         });
}

}  // namespace kernels

Tensor embedding(const Tensor& ids_in, const Tensor& weight_in) {
  EF_CHECK(ids_in.dtype() == DType::Int64, ShapeError, "embedding: ids have dtype ",
           dtype_name(ids_in.dtype()), "; expected int64");
  weight_in.check_dtype(DType::Float32, "embedding: weight");
  EF_CHECK(weight_in.dim() == 2, ShapeError, "embedding: weight has shape ", shape_str(weight_in.shape()),
           "; expected [num_embeddings, embedding_dim]");
  const int64_t V = weight_in.size(0), D = weight_in.size(1), n = ids_in.numel();
  Tensor ids = ids_in.contiguous_data(), weight = weight_in.contiguous_data();
  const int64_t* pi = ids.data<int64_t>();
  for (int64_t p = 0; p < n; ++p) {
    EF_CHECK(pi[p] >= 0 && pi[p] < V, IndexError, "embedding: id ", pi[p],
             " is out of range for a table of V=", V, " rows; expected 0 <= id < ", V);
  }
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape);
  kernels::embedding_forward(pi, weight.data<float>(), out.data<float>(), n, V, D);
  return autograd::record("embedding", out, {weight_in}, [ids, n, V, D](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor dw = Tensor::empty({V, D});
    kernels::embedding_backward(gc.data<float>(), ids.data<int64_t>(), dw.data<float>(), n, V, D);
    return std::vector<Tensor>{dw};
  });
}

}  // namespace eformer
