"""eformer: efficient Transformers on the CPU.

The engine is C++ (eformer._C); names and arguments follow PyTorch where it has them.
"""
from ._C import *  # noqa: F401,F403
from ._C import Tensor, _record_custom
from . import _C
import builtins as _builtins

__version__ = _C.__version__
# `import eformer.optim`, `from eformer.nn import Linear` work like torch's.
import sys as _sys
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
