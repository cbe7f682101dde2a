#include "eformer/attention/kernels/feature_maps.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/blas.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/ops/activation.h"
#include "eformer/ops/elementwise.h"
#include "eformer/ops/reduce.h"

namespace eformer::kernels {

// The per-row maps of feature_maps.h on a = x omega^T (or a = x), a [R, m] row-major, x [R, d].
// Exponential maps (norm_coeff c: 1/2 softmax, 1 gaussian, 0 exp) write phi = exp(a - max a) and,
// when log_scale is not null, l = max a - c |x|^2. Trig writes [sin a | cos a] into phi [R, 2m].
enum class RowMap { Exponential, Trig, Relu, EluPlusOne, Identity };

void feature_map_forward(RowMap map, const float* a, const float* x, float* phi, float* log_scale, int64_t R,
                         int64_t m, int64_t d, float norm_coeff) {
  parallel::parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* ar = a + r * m;
      switch (map) {
        case RowMap::Exponential: {
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t f = 0; f < m; ++f) mx = std::max(mx, ar[f]);
          float* p = phi + r * m;
          for (int64_t f = 0; f < m; ++f) p[f] = fast_exp(ar[f] - mx);
          if (log_scale) {
            float sq = 0.f;
            for (int64_t i = 0; i < d; ++i) sq += x[r * d + i] * x[r * d + i];
            log_scale[r] = mx - norm_coeff * sq;
          }
          break;
        }
        case RowMap::Trig: {
          float* p = phi + r * 2 * m;
          for (int64_t f = 0; f < m; ++f) {
            p[f] = std::sin(ar[f]);
            p[m + f] = std::cos(ar[f]);
          }
          break;
        }
        case RowMap::Relu:
          for (int64_t f = 0; f < m; ++f) phi[r * m + f] = std::max(ar[f], 0.f);
          break;
        case RowMap::EluPlusOne:
          for (int64_t f = 0; f < m; ++f) phi[r * m + f] = ar[f] > 0.f ? ar[f] + 1.f : fast_exp(ar[f]);
          break;
        case RowMap::Identity:
          for (int64_t f = 0; f < m; ++f) phi[r * m + f] = ar[f];
          break;
      }
    }
  });
}

// da [R, m] from phi (the forward's output) and dphi. Exponential: da = dphi o phi (the row max
// and, for keys, the log-scale are exact reparametrizations of phi = exp(a - c|x|^2): see
// feature_maps.h). Trig: da = dsin o cos - dcos o sin. Relu: dphi where phi > 0. Elu + 1: dphi
// times min(phi, 1) (the derivative is exp(a) = phi for a <= 0, 1 above).
void feature_map_backward(RowMap map, const float* phi, const float* dphi, float* da, int64_t R, int64_t m) {
  parallel::parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* out = da + r * m;
      if (map == RowMap::Trig) {
        const float *p = phi + r * 2 * m, *g = dphi + r * 2 * m;
        for (int64_t f = 0; f < m; ++f) out[f] = g[f] * p[m + f] - g[m + f] * p[f];
        continue;
      }
      const float *p = phi + r * m, *g = dphi + r * m;
      for (int64_t f = 0; f < m; ++f) {
        switch (map) {
          case RowMap::Exponential:
            out[f] = g[f] * p[f];
            break;
          case RowMap::Relu:
            out[f] = p[f] > 0.f ? g[f] : 0.f;
            break;
          case RowMap::EluPlusOne:
            out[f] = g[f] * std::min(p[f], 1.f);
            break;
          default:
            out[f] = g[f];
            break;
        }
      }
    }
  });
}

}  // namespace eformer::kernels

namespace eformer::attention {
namespace {

const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::Softmax:
      return "softmax";
    case Kernel::Gaussian:
      return "gaussian";
    case Kernel::Relu:
      return "relu";
    case Kernel::Elu:
      return "elu";
    case Kernel::Exp:
      return "exp";
    case Kernel::Identity:
      return "identity";
  }
  return "?";
}

bool is_shift_invariant_kernel(Kernel k) { return k == Kernel::Softmax || k == Kernel::Gaussian; }

kernels::RowMap row_map(const FeatureMap& fm) {
  if (is_shift_invariant_kernel(fm.kernel))
    return fm.features == Features::Trig ? kernels::RowMap::Trig : kernels::RowMap::Exponential;
  switch (fm.kernel) {
    case Kernel::Relu:
      return kernels::RowMap::Relu;
    case Kernel::Elu:
      return kernels::RowMap::EluPlusOne;
    case Kernel::Exp:
      return kernels::RowMap::Exponential;
    default:
      return kernels::RowMap::Identity;
  }
}

// Coefficient c of the -c |x|^2 term of the exponential maps.
float norm_coeff(const FeatureMap& fm) {
  if (fm.features == Features::Trig || !is_shift_invariant_kernel(fm.kernel)) return 0.f;
  return fm.kernel == Kernel::Softmax ? 0.5f : 1.0f;
}

// Gram-Schmidt on the rows of g [n, d] (n <= d), in double: rows become orthonormal.
void orthonormalize_rows(std::vector<double>& g, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    double* gi = g.data() + i * d;
    for (int64_t j = 0; j < i; ++j) {
      const double* gj = g.data() + j * d;
      double dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += gi[c] * gj[c];
      for (int64_t c = 0; c < d; ++c) gi[c] -= dot * gj[c];
    }
    double norm = 0;
    for (int64_t c = 0; c < d; ++c) norm += gi[c] * gi[c];
    norm = std::sqrt(norm);
    EF_CHECK(norm > 1e-12, ValueError, "draw_omega: a degenerate Gaussian block (rank-deficient draw)");
    for (int64_t c = 0; c < d; ++c) gi[c] /= norm;
  }
}

}  // namespace

bool parse_feature_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                          FeatureMap& fm) {
  auto fail = [&](const char* expected) {
    throw ValueError(detail::concat(who, ": option ", key, " = ", value.dump(), "; expected ", expected));
  };
  if (key == "kernel") {
    const char* expected = "one of softmax, gaussian, relu, elu, exp, identity";
    if (!value.is_string()) fail(expected);
    const std::string s = value.get<std::string>();
    const std::pair<const char*, Kernel> names[] = {{"softmax", Kernel::Softmax}, {"gaussian", Kernel::Gaussian},
                                                    {"relu", Kernel::Relu},       {"elu", Kernel::Elu},
                                                    {"exp", Kernel::Exp},         {"identity", Kernel::Identity}};
    bool found = false;
    for (const auto& [n, k] : names)
      if (s == n) fm.kernel = k, found = true;
    if (!found) fail(expected);
  } else if (key == "features") {
    if (!value.is_string() || (value != "positive" && value != "trig")) fail("positive or trig");
    fm.features = value == "trig" ? Features::Trig : Features::Positive;
  } else if (key == "projection") {
    if (!value.is_boolean()) fail("true or false");
    fm.projection = value.get<bool>();
  } else if (key == "m") {
    // Bounded, so a hostile m never reaches the shape arithmetic: 2^20 features are far beyond use.
    if (!value.is_number_integer() || value.get<int64_t>() <= 0 || value.get<int64_t>() > (int64_t(1) << 20))
      fail("an integer in [1, 1048576]");
    fm.m = value.get<int64_t>();
  } else if (key == "ortho") {
    if (!value.is_boolean()) fail("true or false");
    fm.ortho = value.get<bool>();
  } else if (key == "norms") {
    if (!value.is_string() || (value != "chi" && value != "fixed")) fail("chi or fixed");
    fm.fixed_norms = value == "fixed";
  } else {
    return false;
  }
  return true;
}

void validate_feature_map(const std::string& who, const FeatureMap& fm) {
  if (is_shift_invariant_kernel(fm.kernel)) {
    EF_CHECK(fm.projection, ValueError, who, ": kernel ", kernel_name(fm.kernel),
             " needs random features (projection = true)");
  } else {
    EF_CHECK(fm.features == Features::Positive, ValueError, who, ": features = trig applies to the softmax and ",
             "gaussian kernels only, not ", kernel_name(fm.kernel));
  }
}

std::string describe(const FeatureMap& fm) {
  std::string s = detail::concat("kernel=", kernel_name(fm.kernel));
  if (is_shift_invariant_kernel(fm.kernel)) s += fm.features == Features::Trig ? ", features=trig" : ", features=positive";
  if (!fm.projection) return s + ", projection=false";
  return s + detail::concat(", m=", fm.m > 0 ? std::to_string(fm.m) : std::string("d ln d"),
                            ", ortho=", fm.ortho ? "true" : "false", ", norms=", fm.fixed_norms ? "fixed" : "chi");
}

bool uses_scale(const FeatureMap& fm) { return is_shift_invariant_kernel(fm.kernel); }

int64_t num_random_features(const FeatureMap& fm, int64_t d) {
  if (!fm.projection) return 0;
  if (fm.m > 0) return fm.m;
  return std::max<int64_t>(1, std::llround(double(d) * std::log(double(d))));
}

int64_t feature_dim(const FeatureMap& fm, int64_t d) {
  const int64_t rows = fm.projection ? num_random_features(fm, d) : d;
  return row_map(fm) == kernels::RowMap::Trig ? 2 * rows : rows;
}

Tensor draw_omega(int64_t m, int64_t d, bool ortho, bool fixed_norms, rng::Generator& gen) {
  EF_CHECK(m > 0 && d > 0, ValueError, "draw_omega: m = ", m, " and d = ", d, "; expected both > 0");
  Tensor omega = Tensor::empty({m, d});
  float* w = omega.data<float>();
  if (!ortho) {
    rng::normal_(w, m * d, gen);
  } else {
    // Blocks of d rows: the Q of a Gaussian block's QR (Gram-Schmidt on its rows) (Performer, sec. 2.4).
    std::vector<float> block(size_t(d * d));
    std::vector<double> g(size_t(d * d));
    for (int64_t r0 = 0; r0 < m; r0 += d) {
      const int64_t rows = std::min(d, m - r0);
      rng::normal_(block.data(), d * d, gen);
      std::copy(block.begin(), block.end(), g.begin());
      orthonormalize_rows(g, rows, d);
      for (int64_t i = 0; i < rows * d; ++i) w[r0 * d + i] = float(g[size_t(i)]);
    }
  }
  if (ortho || fixed_norms) {
    // Row norms: sqrt(d), or those of fresh Gaussian rows (chi with d degrees of freedom), so that
    // each row is marginally N(0, I) as in the i.i.d. case.
    std::vector<float> fresh(size_t(m * d));
    if (!fixed_norms) rng::normal_(fresh.data(), m * d, gen);
    for (int64_t r = 0; r < m; ++r) {
      double target = 0, current = 0;
      for (int64_t c = 0; c < d; ++c) {
        target += double(fresh[size_t(r * d + c)]) * fresh[size_t(r * d + c)];
        current += double(w[r * d + c]) * w[r * d + c];
      }
      target = fixed_norms ? std::sqrt(double(d)) : std::sqrt(target);
      const double s = target / std::sqrt(current);
      for (int64_t c = 0; c < d; ++c) w[r * d + c] = float(w[r * d + c] * s);
    }
  }
  return omega;
}

KernelFeatures kernel_features(const Tensor& x, const Tensor& omega, const FeatureMap& fm, bool keys) {
  validate_feature_map("kernel_features", fm);
  EF_CHECK(x.defined() && x.dtype() == DType::Float32 && x.dim() >= 2, ShapeError, "kernel_features: x is ",
           x.defined() ? x.describe() : std::string("undefined"), "; expected float32 [..., n, d]");
  const int64_t d = x.size(x.dim() - 1);
  const int64_t R = d > 0 ? x.numel() / d : 0;
  int64_t m = d;
  if (fm.projection) {
    EF_CHECK(omega.defined() && omega.dtype() == DType::Float32 && omega.dim() == 2 && omega.size(1) == d,
             ShapeError, "kernel_features: omega is ", omega.defined() ? omega.describe() : std::string("undefined"),
             "; expected float32 [m, ", d, "]");
    m = omega.size(0);
  } else {
    EF_CHECK(!omega.defined(), ValueError, "kernel_features: omega given but projection is off");
  }
  const kernels::RowMap map = row_map(fm);
  const float c = norm_coeff(fm);
  const int64_t F = map == kernels::RowMap::Trig ? 2 * m : m;

  Shape phi_shape = x.shape();
  phi_shape.back() = F;
  Shape row_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor xc = x.contiguous_data();
  Tensor wc = fm.projection ? omega.contiguous_data() : Tensor();
  Tensor phi = Tensor::empty(phi_shape);
  const bool exp_log_scale = keys && map == kernels::RowMap::Exponential;
  Tensor log_scale = exp_log_scale ? Tensor::empty(row_shape) : Tensor();
  if (R > 0) {
    Tensor a = xc;
    if (fm.projection) {
      a = Tensor::empty({R, m});
      blas::sgemm(false, true, R, m, d, 1.f, xc.data<float>(), d, wc.data<float>(), d, 0.f, a.data<float>(), m);
    }
    kernels::feature_map_forward(map, a.data<float>(), xc.data<float>(), phi.data<float>(),
                                 exp_log_scale ? log_scale.data<float>() : nullptr, R, m, d, c);
  } else if (exp_log_scale) {
    log_scale = Tensor::zeros(row_shape);
  }
  Tensor pd = phi.detach();
  const bool projection = fm.projection;
  phi = autograd::record("kernel_features", phi, {x}, [pd, xc, wc, map, c, R, m, d, projection](const Tensor& g) {
    Tensor gc = g.contiguous_data();
    Tensor da = Tensor::empty({R, m});
    Tensor dx = Tensor::empty(xc.shape());
    if (R == 0) return std::vector<Tensor>{dx};
    kernels::feature_map_backward(map, pd.data<float>(), gc.data<float>(), da.data<float>(), R, m);
    float* dxp = dx.data<float>();
    if (projection)
      blas::sgemm(false, false, R, d, m, 1.f, da.data<float>(), m, wc.data<float>(), d, 0.f, dxp, d);
    else
      std::copy(da.data<float>(), da.data<float>() + R * d, dxp);
    if (c != 0.f) {  // d/dx of -c |x|^2 inside every feature: -2c x sum_f da_f
      const float* dap = da.data<float>();
      const float* xp = xc.data<float>();
      parallel::parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float s = 0.f;
          for (int64_t f = 0; f < m; ++f) s += dap[r * m + f];
          for (int64_t i = 0; i < d; ++i) dxp[r * d + i] -= 2.f * c * s * xp[r * d + i];
        }
      });
    }
    return std::vector<Tensor>{dx};
  });
  // The trigonometric softmax map's exp(|y|^2 / 2) of the keys: a differentiable log-scale.
  if (keys && map == kernels::RowMap::Trig && fm.kernel == Kernel::Softmax)
    log_scale = mul_scalar(sum(mul(x, x), {x.dim() - 1}), 0.5f);
  return {phi, log_scale};
}

}  // namespace eformer::attention
