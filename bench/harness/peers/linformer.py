"""lucidrains' linformer package (LinformerSelfAttention), the peer of our `linformer` at its default sharing
(headwise: one E and one F [k, max_len] for every head of the layer, which is the package's default,
`one_kv_head=False, share_kv=False`). Its projections are bypassed so it attends the given q, k, v: to_q is the
identity on the merged heads, to_k and to_v return k and v, to_out is the identity; our E and F are copied
into its proj_k and proj_v ([max_len, k], the transpose of ours). Bidirectional only (as the paper and ours).
The merge of q, k, v [B, H, N, d] into its [B, N, H d] layout is inside the timed call (three copies of N H d
floats; small next to the attention)."""
from .base import Peer, torch_tensor


class LinformerPeer(Peer):
    name = "linformer"
    package = "linformer"

    def applies(self, entry):
        return entry["name"] == "linformer"

    def imports(self):
        import linformer  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from linformer import LinformerSelfAttention
        E, F = torch_tensor(inputs["extras"]["E"]), torch_tensor(inputs["extras"]["F"])
        B, H, N, d = inputs["q"].shape
        attn = LinformerSelfAttention(dim=H * d, seq_len=N, k=E.shape[1], heads=H, dim_head=d)
        attn.proj_k = torch.nn.Parameter(E[0].T.contiguous(), requires_grad=False)
        attn.proj_v = torch.nn.Parameter(F[0].T.contiguous(), requires_grad=False)
        attn.to_q, attn.to_out = torch.nn.Identity(), torch.nn.Identity()
        kv = {}
        del attn.to_k, attn.to_v
        attn.to_k, attn.to_v = (lambda _: kv["k"]), (lambda _: kv["v"])

        def merge(x):
            return x.transpose(1, 2).reshape(B, N, H * d)

        def call(q, k, v):
            kv["k"], kv["v"] = merge(k), merge(v)
            return attn(merge(q)).reshape(B, N, H, d).transpose(1, 2)
        return call
