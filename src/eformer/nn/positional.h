// Position information: the sinusoidal table (Vaswani et al. 2017, sec. 3.5), learned absolute
// positions, and rotary embeddings (RoFormer, Su et al. 2021).
//
// Rotary pairing: the GPT-NeoX / "rotate_half" convention (also HF Llama's): feature i of the first
// half is paired with feature i + d/2, and the pair is rotated by theta_{pos,i} = pos * base^(-2i/d),
// i in [0, d/2):
//   y[i]       = x[i] cos(theta) - x[i + d/2] sin(theta)
//   y[i + d/2] = x[i + d/2] cos(theta) + x[i] sin(theta)
// In PyTorch terms: y = x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) and
// cos, sin = cos/sin(cat(theta, theta)) along the last dim. (GPT-J / the RoFormer paper pair
// adjacent features 2i, 2i+1 instead; weights trained one way do not transfer to the other.)
// Because rotations compose, q_m . k_n after rotation depends on m and n only through m - n.
#pragma once
#include <array>
#include <cstdint>

#include "eformer/nn/module.h"

namespace eformer::nn {

// [n, d]: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)), computed in
// double. n >= 0, d > 0 (ValueError otherwise); an odd d ends with a sin column.
Tensor sinusoidal_positions(int64_t n, int64_t d);

// Rotates x [..., N, d] (d even, typically [B, H, N, d]) where row t is at position
// position_offset + t (incremental decoding passes the number of tokens already seen).
// Differentiable: the gradient is the inverse rotation of the upstream gradient.
Tensor apply_rotary(const Tensor& x, int64_t position_offset = 0, float base = 10000.0f);

// Learned absolute positions (GPT-2/BERT style): a [max_len, d] table, N(0, 1) like torch.nn.Embedding.
class LearnedPositions : public Module {
 public:
  LearnedPositions(int64_t max_len, int64_t d);  // both > 0
  std::string describe() const override;

  // x [..., N, d] -> x + table[offset : offset + N]; offset + N > max_len is an IndexError.
  Tensor forward(const Tensor& x, int64_t position_offset = 0) const;
  // table[offset : offset + n] as a [n, d] view (differentiable).
  Tensor positions(int64_t n, int64_t position_offset = 0) const;

  int64_t max_len() const { return max_len_; }
  int64_t dim() const { return d_; }
  const Tensor& weight() const { return weight_; }

 private:
  int64_t max_len_, d_;
  Tensor weight_;
};

// Axial position embeddings (the Reformer's, after Ho et al. 2019's axial layout): position p of
// a sequence laid out as an n1 x n2 grid gets concat(E1[p / n2], E2[p % n2]), E1 [n1, d1] and
// E2 [n2, d2], d1 + d2 = d. Two small tables instead of one [n1 n2, d]: at a million positions and
// d = 256, 2 x 1024 x 128 floats instead of 256 M. Initialised N(0, 1) like LearnedPositions.
class AxialPositions : public Module {
 public:
  // shape {n1, n2} and dims {d1, d2}, all > 0 (ValueError otherwise).
  AxialPositions(std::array<int64_t, 2> shape, std::array<int64_t, 2> dims);
  std::string describe() const override;

  // x [..., N, d] -> x + the embeddings of positions offset .. offset + N - 1; beyond n1 n2 is an IndexError.
  Tensor forward(const Tensor& x, int64_t position_offset = 0) const;
  // The embeddings [n, d] of positions offset .. offset + n - 1 (differentiable).
  Tensor positions(int64_t n, int64_t position_offset = 0) const;

  int64_t capacity() const { return shape_[0] * shape_[1]; }
  int64_t dim() const { return dims_[0] + dims_[1]; }
  const Tensor& rows() const { return rows_; }  // E1 [n1, d1]
  const Tensor& cols() const { return cols_; }  // E2 [n2, d2]

 private:
  std::array<int64_t, 2> shape_, dims_;
  Tensor rows_, cols_;
};

namespace kernels {
// cos, sin [N, d/2]: of theta = (offset + t) * base^(-2i/d), computed in double.
void rotary_table(float* cos, float* sin, int64_t N, int64_t d, int64_t offset, double base);
// x, y [outer, N, d]: y = the rotation of x above (cos, sin from rotary_table).
void rotary_forward(const float* x, float* y, const float* cos, const float* sin, int64_t outer, int64_t N,
                    int64_t d);
// dy, dx [outer, N, d]: dx = the inverse rotation of dy (theta -> -theta).
void rotary_backward(const float* dy, float* dx, const float* cos, const float* sin, int64_t outer, int64_t N,
                     int64_t d);
}  // namespace kernels

}  // namespace eformer::nn
