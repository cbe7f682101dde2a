#include "eformer/attention/mechanisms/axial.h"

#include <algorithm>
#include <vector>

#include "eformer/attention/kernels/flash.h"
#include "eformer/attention/mechanisms/aft.h"  // parse_image_shape
#include "eformer/attention/mechanisms/axial_lines.h"
#include "eformer/ops/shape.h"

namespace eformer::attention {
namespace {

const char* kWho = "attention 'axial'";

std::vector<OptionSpec> axial_option_specs() {
  std::vector<OptionSpec> specs = multi_head_option_specs();
  specs.push_back({"image_shape", "[int, int]", "from max_len: w = ceil(sqrt(max_len)), h = ceil(max_len / w)",
                   "[height, width] of the raster-ordered image the sequence fills (N <= height * width)"});
  return specs;
}

// The smallest w with w * w >= n.
int64_t ceil_sqrt(int64_t n) {
  int64_t w = 1;
  while (w * w < n) ++w;
  return w;
}

// Real keys of the padded image [B, rows * width] (false past N and where key_mask is false), laid out
// for the row call [B * rows, width] or the column call [B * width, rows].
Tensor axis_mask(const Tensor& key_mask, int64_t B, int64_t N, int64_t rows, int64_t width, bool columns) {
  const Tensor km = key_mask.defined() ? key_mask.contiguous_data() : Tensor();
  Tensor out = Tensor::zeros(columns ? Shape{B * width, rows} : Shape{B * rows, width}, DType::Bool);
  bool* o = out.data<bool>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t) {
      const int64_t r = t / width, c = t % width;
      o[columns ? (b * width + c) * rows + r : (b * rows + r) * width + c] =
          !km.defined() || km.data<bool>()[b * N + t];
    }
  return out;
}

// x [B, H', N, d] zero-padded to rows * width positions, as [B, H', rows, width, d].
Tensor as_image(const Tensor& x, int64_t rows, int64_t width) {
  const int64_t B = x.size(0), Hx = x.size(1), N = x.size(2), d = x.size(3), pad = rows * width - N;
  const Tensor padded = pad > 0 ? cat({x, Tensor::zeros({B, Hx, pad, d})}, 2) : x;
  return reshape(padded, {B, Hx, rows, width, d});
}

// Attention along one axis of the image for heads [h0, h1): rows (a reshape of the padded sequence) or
// columns (a transposing copy), each line a batch entry of one flash call.
Tensor along_axis(const Tensor& q, const Tensor& k, const Tensor& v, int64_t h0, int64_t h1, int64_t width,
                  const AttentionOptions& opts, bool columns) {
  // Queries and keys (N != M bidirectional: pixel i of each) share one image of `rows` rows.
  const int64_t B = q.size(0), N = q.size(2), M = k.size(2), d = q.size(3), Hx = h1 - h0,
                rows = (std::max(N, M) + width - 1) / width;
  // [B, Hx, rows, width, d] -> lines [B * lines, Hx, length, d]; rows: lines = rows; columns: lines = width.
  const std::vector<int64_t> to_lines = columns ? std::vector<int64_t>{0, 3, 1, 2, 4}
                                                : std::vector<int64_t>{0, 2, 1, 3, 4};
  const int64_t lines = columns ? width : rows, length = columns ? rows : width;
  auto line_up = [&](const Tensor& x) {
    return reshape(permute(as_image(slice(x, 1, h0, h1), rows, width), to_lines), {B * lines, Hx, length, d});
  };
  AttentionOptions o = opts;
  // The padding pixels need masking only in the bidirectional form: causally they lie after every real query.
  const bool padded = rows * width != M;
  o.key_mask = opts.key_mask.defined() || (padded && !opts.causal)
                   ? axis_mask(opts.key_mask, B, M, rows, width, columns)
                   : Tensor();
  const Tensor out = reshape(flash_attention(line_up(q), line_up(k), line_up(v), o), {B, lines, Hx, length, d});
  const std::vector<int64_t> back = columns ? std::vector<int64_t>{0, 2, 3, 1, 4}
                                            : std::vector<int64_t>{0, 2, 1, 3, 4};
  const Tensor image = reshape(permute(out, back), {B, Hx, rows * width, d});
  return rows * width == N ? image : slice(image, 2, 0, N);
}

// Bool [heads, N, M]: query i (at pixel i, or i + M - N causal) attends key j on its row (row heads) or
// column (column heads), and j <= its pixel when causal.
Tensor axial_pattern(int64_t N, int64_t M, int64_t heads, bool causal, int64_t width) {
  Tensor p = Tensor::zeros({heads, N, M}, DType::Bool);
  bool* out = p.data<bool>();
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < N; ++i) {
      const int64_t at = causal ? i + (M - N) : i;
      for (int64_t j = 0; j < M; ++j) {
        const bool same_line = h < axial_row_heads(heads) ? at / width == j / width : at % width == j % width;
        out[(h * N + i) * M + j] = at >= 0 && same_line && (!causal || j <= at);
      }
    }
  return p;
}

// The width from args.options (image_shape) or ceil(sqrt(n)); checks n fits the image.
int64_t functional_width(const MechanismArgs& args, int64_t n) {
  int64_t h = 0, w = 0;
  for (const auto& [key, value] : args.options.items()) {
    if (key != "image_shape") options::unknown(kWho, key, {{"image_shape", "", "", ""}});
    parse_image_shape(kWho, value, h, w);
  }
  if (w == 0) return ceil_sqrt(n);
  EF_CHECK(n <= h * w, ValueError, kWho, ": ", n, " positions do not fit option image_shape = [", h, ", ", w,
           "] (", h * w, " pixels)");
  return w;
}

// The streaming state: the KV cache [B, H, T, d].
struct AxialCache : RecurrentState {
  Tensor k, v;
  int64_t length() const override { return k.defined() ? k.size(2) : 0; }
};

}  // namespace

Tensor axial_core(const Tensor& q, const Tensor& k, const Tensor& v, int64_t width, const AttentionOptions& opts) {
  const AttentionDims dims = validate_attention(kWho, q, k, v, opts);
  EF_CHECK(dims.N == dims.M || !opts.causal, ShapeError, kWho, ": q has ", dims.N, " positions and k ", dims.M,
           "; the causal form is self-attention over one image (expected N == M)");
  EF_CHECK(width >= 1, ValueError, kWho, ": image width ", width, "; expected >= 1");
  const int64_t Hr = axial_row_heads(dims.H);
  if (opts.dropout == 0.0f && dims.N > 0 && dims.M > 0) {
    // Both axes in one node (axial_lines.h); the key masks are along_axis's.
    const int64_t rows = (std::max(dims.N, dims.M) + width - 1) / width;
    const bool mask = opts.key_mask.defined() || (rows * width != dims.M && !opts.causal);
    auto line_mask = [&](bool columns) {
      return mask ? axis_mask(opts.key_mask, dims.B, dims.M, rows, width, columns) : Tensor();
    };
    return axial_lines_attention(q, k, v, rows, width, Hr, line_mask(false),
                                 Hr < dims.H ? line_mask(true) : Tensor(), dims.scale, opts.causal);
  }
  const Tensor rows = along_axis(q, k, v, 0, Hr, width, opts, false);
  if (Hr == dims.H) return rows;
  return cat({rows, along_axis(q, k, v, Hr, dims.H, width, opts, true)}, 1);
}

AxialOptions parse_axial_options(const nlohmann::json& options, const std::string& positions) {
  EF_CHECK(options.is_object(), ValueError, kWho, ": options must be a JSON object, got ", options.dump());
  AxialOptions o;
  o.heads.rotary = positions == "rotary";
  for (const auto& [key, value] : options.items()) {
    if (parse_multi_head_option(kWho, key, value, o.heads)) continue;
    if (key != "image_shape") options::unknown(kWho, key, axial_option_specs());
    parse_image_shape(kWho, value, o.image_h, o.image_w);
    EF_CHECK(o.image_h <= options::kMaxOptionInt && o.image_w <= options::kMaxOptionInt, ValueError, kWho,
             ": option image_shape = ", value.dump(), "; expected sides <= ", options::kMaxOptionInt);
  }
  return o;
}

MechanismEntry axial_entry() {
  MechanismEntry e;
  e.name = "axial";
  e.description =
      "axial attention: half the heads along the rows, half along the columns of the sequence as an image, "
      "O(N sqrt N) (Ho et al. 2019, sec. 3-4)";
  e.capabilities = {.causal = true, .bidirectional = true, .padding_mask = true, .recurrent = true, .dropout = true};
  e.reference = "softmax-pattern";
  e.options = axial_option_specs();
  e.check_options = [](const nlohmann::json& o) { parse_axial_options(o); };
  e.make = [](const MechanismConfig& c) -> std::shared_ptr<Mechanism> {
    return std::make_shared<AxialAttention>(c);
  };
  e.functional = [](const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                    const MechanismArgs& args) {
    EF_CHECK(args.options.is_object(), ValueError, kWho, ": options must be a JSON object");
    options::check_tensors(kWho, args, {});
    const int64_t n = q.defined() && k.defined() && q.dim() == 4 && k.dim() == 4 ? std::max(q.size(2), k.size(2)) : 1;
    return axial_core(q, k, v, functional_width(args, n), opts);
  };
  e.pattern = [](int64_t N, int64_t M, int64_t heads, bool causal, const MechanismArgs& args, uint64_t) {
    return axial_pattern(N, M, heads, causal, functional_width(args, std::max(N, M)));
  };
  return e;
}

AxialAttention::AxialAttention(const MechanismConfig& config)
    : ProjectedAttention("AxialAttention", "axial", config, parse_axial_options(config.options, config.positions).heads),
      options_(parse_axial_options(config.options, config.positions)) {
  EF_CHECK(H_ >= 2, ValueError, label(), ": n_heads = ", H_,
           "; axial attention splits its heads between rows and columns (expected >= 2)");
  const int64_t L = config.max_len;
  if (options_.image_w == 0 && L > 0) {
    options_.image_w = ceil_sqrt(L);
    options_.image_h = (L + options_.image_w - 1) / options_.image_w;
  }
  EF_CHECK(options_.image_w > 0 || !config.causal, ValueError, label(),
           ": the causal form needs a fixed layout: give option image_shape or the model's max_len");
  EF_CHECK(L <= options_.image_h * options_.image_w || options_.image_w == 0, ValueError, label(),
           ": option image_shape = [", options_.image_h, ", ", options_.image_w, "] has ",
           options_.image_h * options_.image_w, " pixels, fewer than max_len = ", L);
}

std::string AxialAttention::describe() const {
  return detail::concat("AxialAttention(d_model=", config_.d_model, ", heads=", H_, " (", axial_row_heads(H_),
                        " rows), causal=", config_.causal ? "true" : "false", ", image_shape=[", options_.image_h,
                        ", ", options_.image_w, "])");
}

int64_t AxialAttention::width_for(int64_t N) const {
  if (options_.image_w == 0) return ceil_sqrt(N);
  EF_CHECK(N <= options_.image_h * options_.image_w, ValueError, label(), ": ", N,
           " positions do not fit option image_shape = [", options_.image_h, ", ", options_.image_w, "] (",
           options_.image_h * options_.image_w, " pixels)");
  return options_.image_w;
}

Tensor AxialAttention::mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) {
  const Heads h = project(x, memory);
  AttentionOptions opts;
  opts.causal = config_.causal;
  opts.key_mask = key_mask;
  opts.dropout = active_dropout();
  return output(axial_core(h.q, h.k, h.v, width_for(x.size(1)), opts));
}

std::unique_ptr<RecurrentState> AxialAttention::start_native(int64_t) const {
  return std::make_unique<AxialCache>();
}

Tensor AxialAttention::step_native(const Tensor& x_t, RecurrentState& state) {
  auto& cache = static_cast<AxialCache&>(state);
  const int64_t offset = cache.length(), T = x_t.size(1), w = width_for(offset + T), Hr = axial_row_heads(H_);
  const Heads h = project_step(x_t, offset);
  cache.k = cache.k.defined() ? cat({cache.k, h.k}, 2) : contiguous(h.k);
  cache.v = cache.v.defined() ? cat({cache.v, h.v}, 2) : contiguous(h.v);
  AttentionOptions opts;
  opts.dropout = active_dropout();
  std::vector<Tensor> outs;
  for (int64_t i = 0; i < T; ++i) {  // pixel t = (r, c): its row so far and its column so far
    const int64_t t = offset + i, row_start = t - t % w;
    const Tensor q = slice(h.q, 2, i, i + 1);
    auto heads = [&](const Tensor& x, int64_t h0, int64_t h1) { return slice(x, 1, h0, h1); };
    const Tensor row = flash_attention(heads(q, 0, Hr), slice(heads(cache.k, 0, Hr), 2, row_start, t + 1),
                                       slice(heads(cache.v, 0, Hr), 2, row_start, t + 1), opts);
    const Tensor col = flash_attention(heads(q, Hr, H_), slice(heads(cache.k, Hr, H_), 2, t % w, t + 1, w),
                                       slice(heads(cache.v, Hr, H_), 2, t % w, t + 1, w), opts);
    outs.push_back(cat({row, col}, 1));
  }
  return output(T == 1 ? outs[0] : cat(outs, 2));
}

}  // namespace eformer::attention
