#include "eformer/attention/mechanisms/axial_lines.h"

#include <cstring>
#include <vector>

#include "eformer/attention/kernels/flash.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/parallel.h"

namespace eformer::attention {
namespace {

// One axis of the image: heads [h0, h1) attend along rows (lines = rows, length = width) or columns
// (lines = width, length = rows).
struct Axis {
  int64_t B, H, d, rows, width, h0, h1;
  bool columns;
  int64_t heads() const { return h1 - h0; }
  int64_t lines() const { return columns ? width : rows; }
  int64_t length() const { return columns ? rows : width; }
  Shape line_shape() const { return {B * lines(), heads(), length(), d}; }
};

// Between x [B, H, n, d] (pixels in raster order) and the axis's lines L [B * lines, heads, length, d]:
// gather: L <- x, 0 at pixels >= n; scatter: x <- L at pixels < n (the padding pixels are dropped).
void copy_lines(const Axis& a, int64_t n, float* x, float* L, bool gather) {
  const int64_t lines = a.lines(), length = a.length(), Hx = a.heads(), d = a.d;
  const size_t row_bytes = size_t(d) * sizeof(float);
  parallel::parallel_for(a.B * lines * Hx, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t hh = i % Hx, line = (i / Hx) % lines, b = i / (Hx * lines);
      float* l = L + i * length * d;
      const float* end_of_line = l + length * d;
      for (int64_t pos = 0; l < end_of_line; ++pos, l += d) {
        const int64_t t = a.columns ? pos * a.width + line : line * a.width + pos;
        float* xr = x + ((b * a.H + a.h0 + hh) * n + t) * d;
        if (t >= n) {
          if (gather) std::memset(l, 0, row_bytes);
        } else if (gather) {
          std::memcpy(l, xr, row_bytes);
        } else {
          std::memcpy(xr, l, row_bytes);
        }
      }
    }
  });
}

Tensor gather_lines(const Axis& a, const Tensor& x) {
  Tensor L = Tensor::empty(a.line_shape());
  copy_lines(a, x.size(2), const_cast<float*>(x.data<float>()), L.data<float>(), true);
  return L;
}

// The saved forward of one axis: its lines, output and log-sum-exps.
struct AxisPass {
  Axis axis;
  Tensor q, k, v, out, lse, mask;
};

const bool* mask_ptr(const Tensor& m) { return m.defined() ? m.data<bool>() : nullptr; }

}  // namespace

Tensor axial_lines_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t rows, int64_t width,
                             int64_t row_heads, const Tensor& row_mask, const Tensor& col_mask, float scale,
                             bool causal) {
  const Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), d = q.size(3);
  const Tensor masks[2] = {row_mask.defined() ? row_mask.contiguous_data() : Tensor(),
                           col_mask.defined() ? col_mask.contiguous_data() : Tensor()};
  // Rows in place: on an unpadded image (N == M == rows * width) the row heads of batch b are one
  // contiguous block of row_heads * rows lines of one head each, in q, k, v, out and their gradients.
  const bool in_place = N == M && rows * width == N;
  const int64_t block = row_heads * N * d, place_lines = row_heads * rows;
  Tensor place_mask, place_lse;
  if (in_place) {
    place_lse = Tensor::empty({B, place_lines * width});
    if (masks[0].defined()) {  // [B, row_heads * rows, width]: line (h, r) of batch b is row r's keys
      place_mask = Tensor::empty({B, place_lines, width}, DType::Bool);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < row_heads; ++h)
          std::memcpy(place_mask.data<bool>() + (b * row_heads + h) * rows * width,
                      masks[0].data<bool>() + b * rows * width, size_t(rows * width));
    }
  }
  std::vector<AxisPass> passes;
  for (const bool columns : {false, true}) {
    if (!columns && in_place) continue;  // read in place
    const Axis a{B, H, d, rows, width, columns ? row_heads : 0, columns ? H : row_heads, columns};
    if (a.heads() > 0)
      passes.push_back({a, gather_lines(a, qc), gather_lines(a, kc), gather_lines(a, vc), Tensor(), Tensor(),
                        masks[columns]});
  }
  // Every (head, pixel < N) of out is written by exactly one axis.
  Tensor out = Tensor::empty({B, H, N, d});
  for (int64_t b = 0; in_place && b < B; ++b) {
    float* o = out.data<float>() + b * H * N * d;
    std::memset(o, 0, size_t(block) * sizeof(float));  // a line with no key stays 0
    kernels::flash_attention_forward(
        qc.data<float>() + b * H * N * d, kc.data<float>() + b * H * N * d, vc.data<float>() + b * H * N * d,
        place_mask.defined() ? place_mask.data<bool>() + b * place_lines * width : nullptr, o,
        place_lse.data<float>() + b * place_lines * width, place_lines, 1, width, width, d, scale, causal);
  }
  for (AxisPass& p : passes) {
    const Axis& a = p.axis;
    p.out = Tensor::zeros(a.line_shape());
    p.lse = Tensor::empty({B * a.lines(), a.heads(), a.length()});
    kernels::flash_attention_forward(p.q.data<float>(), p.k.data<float>(), p.v.data<float>(),
                                     mask_ptr(p.mask), p.out.data<float>(), p.lse.data<float>(),
                                     B * a.lines(), a.heads(), a.length(), a.length(), d, scale, causal);
    copy_lines(a, N, out.data<float>(), p.out.data<float>(), false);
  }
  const Tensor od = out.detach();
  return autograd::record(
      "axial_attention", out, {q, k, v},
      [passes, qc, kc, vc, od, place_mask, place_lse, in_place, place_lines, B, H, N, M, d, width, scale,
       causal](const Tensor& g) {
        const Tensor gc = g.contiguous_data();
        Tensor dq = Tensor::empty({B, H, N, d}), dk = Tensor::empty({B, H, M, d}),
               dv = Tensor::empty({B, H, M, d});
        for (int64_t b = 0; in_place && b < B; ++b) {
          const int64_t at = b * H * N * d;
          kernels::flash_attention_backward(
              qc.data<float>() + at, kc.data<float>() + at, vc.data<float>() + at,
              place_mask.defined() ? place_mask.data<bool>() + b * place_lines * width : nullptr,
              od.data<float>() + at, place_lse.data<float>() + b * place_lines * width, gc.data<float>() + at,
              dq.data<float>() + at, dk.data<float>() + at, dv.data<float>() + at, place_lines, 1, width,
              width, d, scale, causal);
        }
        for (const AxisPass& p : passes) {
          const Axis& a = p.axis;
          const Tensor dout = gather_lines(a, gc);
          Tensor dql = Tensor::empty(a.line_shape()), dkl = Tensor::empty(a.line_shape()),
                 dvl = Tensor::empty(a.line_shape());
          kernels::flash_attention_backward(
              p.q.data<float>(), p.k.data<float>(), p.v.data<float>(), mask_ptr(p.mask), p.out.data<float>(),
              p.lse.data<float>(), dout.data<float>(), dql.data<float>(), dkl.data<float>(),
              dvl.data<float>(), B * a.lines(), a.heads(), a.length(), a.length(), d, scale, causal);
          copy_lines(a, N, dq.data<float>(), dql.data<float>(), false);
          copy_lines(a, M, dk.data<float>(), dkl.data<float>(), false);
          copy_lines(a, M, dv.data<float>(), dvl.data<float>(), false);
        }
        return std::vector<Tensor>{dq, dk, dv};
      });
}

}  // namespace eformer::attention
