"""What a peer is: a PyTorch implementation that users install, set up to compute the same math as one of our
mechanisms on the same inputs.

A peer declares which registry entries it serves (`applies`, from the entry's reference, pattern and options,
or its name where the peer implements one paper), in which directions (`supports`), the package whose version
the report records, and how its output is checked against ours before it is timed: `check` says how ("exact":
the same math, so only float32 rounding apart; otherwise a sentence naming the statistic) and `tolerance` bounds
max |peer - ours| / max |ours| (the harness refuses to time a peer over it). `prepare` builds the callable once
per process (copying our random features, biases and patterns into the peer where it lets us); the callable
takes torch q, k, v [B, H, N, d] and returns [B, H, N, d].
"""


class Peer:
    name = ""
    package = "torch"
    check = "exact"
    tolerance = 1e-4
    quadratic = False  # materializes N x N: the harness expects its time and memory to grow as N^2
    partial_chunks = True  # runs at lengths its chunk does not divide (the harness's N are powers of two)

    def applies(self, entry):
        return False

    def supports(self, entry, causal):
        caps = entry["capabilities"]
        return caps["causal"] if causal else caps["bidirectional"]

    def available(self):
        """None when the peer imports here, else why not (a missing package, an incompatible version)."""
        try:
            self.imports()
            return None
        except Exception as e:  # any import failure means the peer cannot run here: report it, never crash
            return f"{type(e).__name__}: {e}"

    def imports(self):
        import torch  # noqa: F401

    def prepare(self, entry, causal, inputs):
        raise NotImplementedError

    def rows(self, entry, causal, inputs):
        """Bool [B, H, N]: the output rows the check compares, where the peer's math differs from ours on some
        rows by design (its `check` says which); None: every row."""
        return None


def replace_child(module, name, fn):
    """Puts a plain callable where torch keeps a child module (nn.Module refuses a non-module there)."""
    delattr(module, name)
    object.__setattr__(module, name, fn)


def torch_tensor(a):
    import torch
    return torch.from_numpy(a)


def pattern(entry, N, H, causal):
    """Our exact pattern Bool [H, N, N] (eformer.attention_pattern) as a torch tensor, built untimed."""
    import eformer as ef
    import torch
    return torch.from_numpy(ef.attention_pattern(entry["name"], N, N, heads=H, causal=causal))
