#include "eformer/nn/embedding.h"

#include "eformer/nn/linear.h"
#include "eformer/ops/embedding.h"

namespace eformer::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim)
    : Module("Embedding"), V_(num_embeddings), D_(embedding_dim) {
  EF_CHECK(V_ > 0 && D_ > 0, ValueError, "Embedding: num_embeddings = ", V_, " and embedding_dim = ", D_,
           "; expected both > 0");
  weight_ = register_parameter("weight", normal_init({V_, D_}));
}

std::string Embedding::describe() const { return detail::concat("Embedding(V=", V_, ", D=", D_, ")"); }

Tensor Embedding::forward(const Tensor& ids) const {
  EF_CHECK(ids.dtype() == DType::Int64, ShapeError, where(), "ids have dtype ", dtype_name(ids.dtype()),
           "; expected int64");
  return embedding(ids, weight_);
}

}  // namespace eformer::nn
