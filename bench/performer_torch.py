"""The PyTorch peer of eformer's kernelized attention: FAVOR+ (Performer, Choromanski et al. 2020) and the
Linear Transformer (elu + 1, Katharopoulos et al. 2020), written the way the reference implementations
write them (google-research/performer's fast_attention, lucidrains/performer-pytorch), float32 on the CPU,
with torch's autograd doing the backward. bench/performer_bench.py compares eformer against this.

Shapes: q, k [B, H, N, d], v [B, H, N, dv], omega [m, d] (the same omega eformer is given).

Softmax kernel, positive features (FAVOR+ Lemma 1), with x = q d^-1/4, y = k d^-1/4:
    phi(x) = exp(omega x - |x|^2 / 2 - c)
where c is the stabilizer of the reference code: for queries the row maximum of omega x (it cancels in
the normalization), for keys the maximum of omega y over all keys and features of a (batch, head) (a
common factor of every key, so it cancels too). The 1/sqrt(m) factor is left out (it cancels). eps is
the small constant the reference adds to every feature (performer-pytorch: 1e-4); 0 here by default,
so the result is the exact math that eformer computes.

    bidirectional: out = phi_q (phi_k^T v) / (phi_q (phi_k^T 1))                        (FAVOR+ eq. 5)
    causal:        out_i = phi_q_i . (sum_{j<=i} phi_k_j v_j^T) / phi_q_i . (sum_{j<=i} phi_k_j)
                   by cumulative sums: einsum of phi_k and v to [B, H, N, m, dv], cumsum over N,
                   contract with phi_q (performer-pytorch's causal_linear_attention_noncuda; the
                   prefix-sum form of Performer sec. 2.6). It materializes N x m x dv per head.
"""
import torch
import torch.nn.functional as F


def softmax_features(x, omega, is_query, eps=0.0):
    """Positive random features of the softmax kernel for x [B, H, N, d] (unscaled q or k) -> [B, H, N, m]."""
    d = x.shape[-1]
    x = x * d ** -0.25
    a = torch.einsum("...nd,md->...nm", x, omega)
    half_sq_norm = (x * x).sum(-1, keepdim=True) / 2
    if is_query:
        stab = a.amax(dim=-1, keepdim=True)
    else:
        stab = a.amax(dim=(-1, -2), keepdim=True)
    # The stabilizer is a constant (no gradient), as in the reference implementations.
    return torch.exp(a - half_sq_norm - stab.detach()) + eps


def elu_features(x):
    """The Linear Transformer's feature map elu(x) + 1 (no projection, no scale)."""
    return F.elu(x) + 1


def linear_attention(phi_q, phi_k, v):
    """Bidirectional: phi_q (phi_k^T v) / (phi_q phi_k^T 1). phi_* [B, H, N, F], v [B, H, N, dv]."""
    kv = torch.einsum("...nf,...ne->...fe", phi_k, v)  # [B, H, F, dv]
    den = torch.einsum("...nf,...f->...n", phi_q, phi_k.sum(dim=-2))
    return torch.einsum("...nf,...fe->...ne", phi_q, kv) / den.unsqueeze(-1)


def causal_linear_attention(phi_q, phi_k, v):
    """Causal by cumulative sums (performer-pytorch's causal_linear_attention_noncuda)."""
    den = torch.einsum("...nf,...nf->...n", phi_q, phi_k.cumsum(dim=-2))
    context = torch.einsum("...nf,...ne->...nfe", phi_k, v)  # [B, H, N, F, dv]
    context = context.cumsum(dim=-3)
    return torch.einsum("...nfe,...nf->...ne", context, phi_q) / den.unsqueeze(-1)


def performer_attention(q, k, v, omega, causal=False, eps=0.0):
    """FAVOR+ softmax attention (scale 1/sqrt(d)), positive features from omega [m, d]."""
    phi_q = softmax_features(q, omega, is_query=True, eps=eps)
    phi_k = softmax_features(k, omega, is_query=False, eps=eps)
    return (causal_linear_attention if causal else linear_attention)(phi_q, phi_k, v)


def elu_linear_attention(q, k, v, causal=False):
    """The Linear Transformer: features elu(x) + 1 of q and k as they are."""
    phi_q, phi_k = elu_features(q), elu_features(k)
    return (causal_linear_attention if causal else linear_attention)(phi_q, phi_k, v)


def causal_context_bytes(B, H, N, F, dv, itemsize=4):
    """Size of the [B, H, N, F, dv] tensor the cumsum form materializes (the forward holds two)."""
    return B * H * N * F * dv * itemsize
