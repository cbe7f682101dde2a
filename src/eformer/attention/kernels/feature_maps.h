// Feature maps of kernelized attention (Performer, Choromanski et al. 2020; Linear Transformer,
// Katharopoulos et al. 2020): K(q, k) ~ phi(q) . phi(k), so that attention costs O(N m d).
//
// With x the (scaled) query or key and a = omega x (omega [m, d] random, rows omega_1..omega_m):
//   softmax, positive  phi(x) = exp(a - |x|^2 / 2)            E[phi(x) . phi(y)] = exp(x . y)  (Lemma 1)
//   softmax, trig      phi(x) = exp(|x|^2 / 2) [sin a, cos a]  the same kernel, from Bochner (sec. 2.3)
//   gaussian, positive phi(x) = exp(a - |x|^2)                 E[...] = exp(-|x - y|^2 / 2)
//   gaussian, trig     phi(x) = [sin a, cos a]
//   relu, elu, exp, identity: phi(x) = f(a), f = relu, elu + 1, exp, identity; with projection
//   off, a = x (m = d): the Linear Transformer is elu without projection.
// The 1/sqrt(m) factors are left out: normalized attention is invariant to any factor common to
// all features of a query, or to all keys.
//
// Stabilization. Exponential maps (positive, exp) are returned as phi = exp(a - max_f a) per row
// together with the row's log-scale l = max_f a, so phi(x) = phi~ exp(l) exactly and nothing can
// overflow. The queries' log-scale cancels in the normalized attention and is dropped; the keys'
// is passed to the attention core (kernelized.h), which shifts it by a running maximum. The
// trigonometric softmax map puts its exp(|y|^2 / 2) into the keys' log-scale the same way.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "eformer/core/rng.h"
#include "eformer/core/tensor.h"

namespace eformer::attention {

enum class Kernel { Softmax, Gaussian, Relu, Elu, Exp, Identity };
enum class Features { Positive, Trig };

struct FeatureMap {
  Kernel kernel = Kernel::Softmax;
  Features features = Features::Positive;  // softmax and gaussian only
  bool projection = true;                  // a = omega x; false (a = x) for relu/elu/exp/identity only
  int64_t m = 0;                           // rows of omega; 0: round(d ln d)
  bool ortho = true;                       // block-orthogonal rows (else i.i.d. Gaussian)
  bool fixed_norms = false;                // rows of norm sqrt(d) (else chi-distributed, like Gaussian rows)
};

// Reads one option into `fm` ("kernel", "features", "projection", "m", "ortho", "norms"); returns
// false when `key` is not a feature-map option. Bad values are a ValueError naming `who`.
bool parse_feature_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                          FeatureMap& fm);
inline constexpr const char* kFeatureOptionNames = "kernel, features, projection, m, ortho, norms";
// Cross-option checks (trig only with softmax/gaussian, projection required by them); ValueError.
void validate_feature_map(const std::string& who, const FeatureMap& fm);
std::string describe(const FeatureMap& fm);

// True for the kernels whose normalized attention scales q and k by sqrt(scale) (softmax,
// gaussian); the others take q and k as they are.
bool uses_scale(const FeatureMap& fm);
// Rows of omega for head dim d (fm.m, or round(d ln d)); 0 when the map has no projection.
int64_t num_random_features(const FeatureMap& fm, int64_t d);
// Width of phi for head dim d: 2m for trig, m with projection, d without.
int64_t feature_dim(const FeatureMap& fm, int64_t d);

// omega [m, d]: i.i.d. N(0, 1) rows, or (ortho) blocks of d rows orthogonalized by Gram-Schmidt
// (the QR of a Gaussian block) and rescaled to chi-distributed norms (the norms of fresh Gaussian
// rows) or, fixed_norms, to sqrt(d) (Performer, sec. 2.4). A pure function of the generator state.
Tensor draw_omega(int64_t m, int64_t d, bool ortho, bool fixed_norms, rng::Generator& gen);

struct KernelFeatures {
  Tensor phi;        // [..., n, F]
  Tensor log_scale;  // keys only: [..., n], or undefined when the map has none (it is 0)
};
// x [..., n, d] (already scaled), omega [m, d] (undefined without projection). Differentiable
// w.r.t. x; omega receives no gradient. `keys` selects the keys' form (with the log-scale).
KernelFeatures kernel_features(const Tensor& x, const Tensor& omega, const FeatureMap& fm, bool keys);

}  // namespace eformer::attention
