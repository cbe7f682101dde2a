// Embedding: a [V, D] table of rows looked up by int64 ids (torch.nn.Embedding, initialised
// N(0, 1) like torch's default).
#pragma once
#include <cstdint>

#include "eformer/nn/module.h"

namespace eformer::nn {

class Embedding : public Module {
 public:
  // num_embeddings (V), embedding_dim (D) > 0, ValueError otherwise.
  Embedding(int64_t num_embeddings, int64_t embedding_dim);
  std::string describe() const override;

  // ids int64 [...] -> [..., D]; an id outside [0, V) is an IndexError naming it.
  Tensor forward(const Tensor& ids) const;

  int64_t num_embeddings() const { return V_; }
  int64_t embedding_dim() const { return D_; }
  const Tensor& weight() const { return weight_; }

 private:
  int64_t V_, D_;
  Tensor weight_;
};

}  // namespace eformer::nn
