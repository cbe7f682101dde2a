"""eformer: efficient Transformers on the CPU.

The engine is C++ (eformer._C); names and arguments follow PyTorch where it has them.
"""
import sys as _sys


def _engine():
    """The compiled module for this CPU. Portable builds (pip wheels) carry two: _C for any x86-64 with
    AVX2 (x86-64-v3) and _C_avx512 (x86-64-v4); the second is used where the CPU has AVX-512 F, BW, CD,
    DQ and VL. EFORMER_ISA=base forces _C, EFORMER_ISA=avx512 forces _C_avx512. A native build has _C
    only. Whichever is chosen is registered as eformer._C, so every name below comes from it."""
    import importlib
    import importlib.util
    import os
    forced = os.environ.get("EFORMER_ISA", "")
    if forced not in ("", "base", "avx512"):
        raise ImportError(f"eformer: EFORMER_ISA = {forced!r}; expected base or avx512 (or unset)")
    has_variant = importlib.util.find_spec(__name__ + "._C_avx512") is not None
    if forced == "avx512" and not has_variant:
        raise ImportError("eformer: EFORMER_ISA=avx512, but this build has no AVX-512 module (a native build?)")
    if has_variant and (forced == "avx512" or (forced == "" and _cpu_has_avx512())):
        module = importlib.import_module(__name__ + "._C_avx512")
    else:
        module = importlib.import_module(__name__ + "._C")
    _sys.modules[__name__ + "._C"] = module
    return module


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(flags)


_C = _engine()
from ._C import *  # noqa: F401,F403,E402
from ._C import Tensor, _record_custom  # noqa: E402
import builtins as _builtins  # noqa: E402

__version__ = _C.__version__
isa = _C.__isa__  # what the engine in use was compiled for: "native", "x86-64-v3" or "x86-64-v4"
# `import eformer.optim`, `from eformer.nn import Linear` work like torch's.
for _sub in ("optim", "nn", "data", "models", "train"):
    _sys.modules[__name__ + "." + _sub] = getattr(_C, _sub)


class Function:
    """A custom op with a hand-written backward, like torch.autograd.Function.

    Subclass with static ``forward(ctx, *inputs)`` returning one Tensor and
    ``backward(ctx, grad_output)`` returning one gradient (or None) per input.
    Call it with ``MyFunction.apply(*inputs)``.
    """

    class _Context:
        def save_for_backward(self, *tensors):
            self.saved_tensors = tensors

    @classmethod
    def apply(cls, *inputs):
        ctx = cls._Context()
        with no_grad():
            out = cls.forward(ctx, *inputs)
        tensors = [t for t in inputs if isinstance(t, Tensor)]

        def backward(grad_output):
            grads = cls.backward(ctx, grad_output)
            if not isinstance(grads, (tuple, list)):
                grads = (grads,)
            grads = [g for g, x in zip(grads, inputs) if isinstance(x, Tensor)]
            if len(grads) != len(tensors):
                raise ValueError(f"{cls.__name__}.backward returned {len(grads)} gradients "
                                 f"for {len(tensors)} tensor inputs")
            return list(grads)

        return _record_custom(cls.__name__, out, tensors, backward)


class no_grad:
    """Context manager (and decorator) that disables gradient recording, like torch.no_grad."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _C._set_grad_enabled(False)

    def __exit__(self, *exc):
        _C._set_grad_enabled(self._prev)
        return False

    def __call__(self, fn):
        def wrapped(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapped


# Method forms and operators, so code reads like PyTorch: x.sum(-1), (a @ b).relu(), x[1:, 0].
def _method(name):
    fn = getattr(_C, name)
    return lambda self, *args, **kwargs: fn(self, *args, **kwargs)


for _name in ["add", "sub", "mul", "div", "neg", "pow", "sum", "mean", "max", "matmul", "flatten", "transpose",
              "contiguous", "unsqueeze", "squeeze", "narrow",
              # filled in by the other op families as they exist:
              "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "gelu", "elu", "softplus", "softmax",
              "log_softmax", "masked_fill", "cumsum", "gather", "scatter_add", "argsort"]:
    if hasattr(_C, _name):
        setattr(Tensor, _name, _method(_name))


def _shape_args(args):
    return list(args[0]) if len(args) == 1 and not isinstance(args[0], int) else list(args)


Tensor.reshape = lambda self, *shape: _C.reshape(self, _shape_args(shape))
Tensor.view = Tensor.reshape
Tensor.permute = lambda self, *dims: _C.permute(self, _shape_args(dims))
Tensor.expand = lambda self, *shape: _C.expand(self, _shape_args(shape))
Tensor.T = property(lambda self: _C.transpose(self, -2, -1))
Tensor.__add__ = lambda a, b: _C.add(a, b)
Tensor.__radd__ = lambda a, b: _C.add(b, a)
Tensor.__sub__ = lambda a, b: _C.sub(a, b)
Tensor.__rsub__ = lambda a, b: _C.sub(b, a)
Tensor.__mul__ = lambda a, b: _C.mul(a, b)
Tensor.__rmul__ = lambda a, b: _C.mul(b, a)
Tensor.__truediv__ = lambda a, b: _C.div(a, b)
Tensor.__rtruediv__ = lambda a, b: _C.div(b, a)
Tensor.__neg__ = lambda a: _C.neg(a)
Tensor.__pow__ = lambda a, p: _C.pow(a, p)
Tensor.__matmul__ = lambda a, b: _C.matmul(a, b)


def _getitem(self, key):
    """Basic indexing: ints, slices (any step > 0), None and Ellipsis; every result is a view."""
    if not isinstance(key, tuple):
        key = (key,)
    if Ellipsis in key:
        i = key.index(Ellipsis)
        named = _builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
        key = key[:i] + (_builtins.slice(None),) * (self.ndim - named) + key[i + 1:]
    out, dim = self, 0
    for k in key:
        if k is None:
            out = _C.unsqueeze(out, dim)
            dim += 1
        elif isinstance(k, int):
            n = out.shape[dim]
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for dim {dim} of size {n}")
            out = _C.squeeze(_C.narrow(out, dim, k % n, 1), dim)
        elif isinstance(k, _builtins.slice):
            start, stop, step = k.indices(out.shape[dim])
            if step <= 0:
                raise ValueError("slices need a positive step")
            out = _C.slice(out, dim, start, _builtins.max(stop, start), step)
            dim += 1
        else:
            raise TypeError(f"unsupported index {k!r}; use gather() for tensor indices")
    return out


Tensor.__getitem__ = _getitem
del _name, _sub
