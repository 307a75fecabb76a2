"""MACs as ptflops' `pytorch` backend counts them: the convention of the paper's Table 7 "FLOPs".

The rules of ptflops >= 0.7.2 (https://github.com/sovrasov/flops-counter.pytorch, files
`ptflops/pytorch_ops.py` and `ptflops/pytorch_engine.py`), re-implemented on shapes alone, so meta
tensors work. During one forward three things are counted, and nothing else:
- forward hooks on modules whose *exact* type is listed in `MODULE_RULES` (a subclass of nn.Linear
  counts 0); only the outermost listed module counts, what it contains does not;
- patched functionals (`_FUNCTIONALS`): attributes of torch.nn.functional replaced for the duration,
  so a call `F.gelu(x)` looks up the patch and counts, while a `gelu` bound earlier by
  `from torch.nn.functional import gelu` does not (as in ptflops). They count wherever they are
  called, also inside listed modules: nn.GELU, nn.ReLU, the pools and nn.Upsample count twice;
- patched tensor ops (`_TENSOR_OPS`): torch.matmul / mm / bmm / addmm / baddbmm / mul / add and the
  Tensor methods of the same names (no Tensor.baddbmm).
Not counted: F.linear, the operators `@`, `+`, `*` (a residual add), torch.einsum, torch.softmax,
F.scaled_dot_product_attention: where an implementation puts its matmuls decides whether they count.
ptflops also hooks transposed convs, RNNs and timm's Attention; no msr projector has them (here: 0).
F.interpolate follows ptflops >= 0.7.4 (batch × channels × output size; 0.7.2 left out B × C).

Per image: the whole count divided by the batch. ptflops divides only the module-hook part (and
counts nn.Upsample on the first sample); with a batch of 1, the batch ptflops builds, they agree.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msr.projectors.channel_mlp import torch_ops

ModuleRule = Callable[
    [Any, tuple[Any, ...], dict[str, Any], Any], int
]  # (module, args, kwargs, out)
OpRule = Callable[..., int]  # called with the op's own arguments

_MISSING = object()


def _arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, *names: str, default: Any = _MISSING
) -> Any:
    """Argument `index` of a call, given by position or by one of `names`."""
    if len(args) > index:
        return args[index]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    if default is _MISSING:
        raise TypeError(f"ptflops rule: argument {index} ({'/'.join(names)}) missing from the call")
    return default


# ---- module rules: (module, positional args, keyword args, output) -> MACs of the whole batch


def _linear(m: nn.Linear, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    x = _arg(args, kwargs, 0, "input")  # (..., in) -> (..., out)
    bias = out.shape[-1] if m.bias is not None else 0
    return (x.shape[-1] * out.shape[-1] + bias) * math.prod(x.shape[:-1])


def _conv(
    m: nn.Conv1d | nn.Conv2d | nn.Conv3d, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor
) -> int:
    x = _arg(args, kwargs, 0, "input")  # (B, C_in, *spatial) -> (B, C_out, *spatial')
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    macs = per_position * x.shape[0] * math.prod(out.shape[2:])
    bias = x.shape[0] * math.prod(out.shape[1:]) if m.bias is not None else 0
    return macs + bias


def _output_numel(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    return out.numel()


def _input_numel(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return int(_arg(args, kwargs, 0, "input").numel())


def _norm(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    # ×2 only for an attribute named `affine` (BatchNorm, InstanceNorm, GroupNorm); LayerNorm's is
    # `elementwise_affine`, so it counts once
    return _input_numel(m, args, kwargs, out) * (2 if getattr(m, "affine", False) else 1)


def _attention(
    m: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> int:
    """ptflops' closed form; the patched ops that nn.MultiheadAttention runs inside count on top."""
    q, k, v = (_arg(args, kwargs, i, name) for i, name in enumerate(("query", "key", "value")))
    if q.ndim != 3:
        raise ValueError(
            "ptflops counts nn.MultiheadAttention on batched (3-D) inputs only, "
            f"got query {tuple(q.shape)}"
        )
    batch, seq = (0, 1) if m.batch_first else (1, 0)
    (lq, dq), (lk, dk), (lv, dv) = ((t.shape[seq], t.shape[2]) for t in (q, k, v))
    h = m.num_heads
    macs = lq * dq  # scaling q
    macs += lq * dq * dq + lk * dk * dk + lv * dv * dv  # in-projections, as ptflops writes them
    macs += (lq + lk + lv) * dq if m.in_proj_bias is not None else 0
    macs += h * (lq * lk * (dq // h) + lq * lk + lq * lk * (dv // h))  # QKᵀ, softmax, AV per head
    macs += lq * dv * (dv + 1)  # output projection, its bias always counted
    return macs * q.shape[batch]


MODULE_RULES: dict[type[nn.Module], ModuleRule] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv),
    **dict.fromkeys((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU), _output_numel),
    **dict.fromkeys(
        (
            *(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
            *(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
            *(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
        ),
        _input_numel,
    ),
    **dict.fromkeys(
        (
            *(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
            *(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
            *(nn.GroupNorm, nn.LayerNorm),
        ),
        _norm,
    ),
    nn.Linear: _linear,
    nn.Upsample: _output_numel,
    nn.MultiheadAttention: _attention,
}


# ---- op rules: the op's own arguments -> MACs


def _first_numel(*args: Any, **kwargs: Any) -> int:
    return int(_arg(args, kwargs, 0, "input").numel())


def _interpolate(*args: Any, **kwargs: Any) -> int:
    """The output size: (B, C, *size) from `size`, or the input numel × the scale factors."""
    x = _arg(args, kwargs, 0, "input")  # (B, C, *spatial)
    if x.ndim < 3:
        raise ValueError(f"interpolate counts (B, C, *spatial) inputs, got {tuple(x.shape)}")
    size = _arg(args, kwargs, 1, "size", default=None)
    if size is not None:
        spatial = math.prod(size) if isinstance(size, tuple | list) else int(size) ** (x.ndim - 2)
        return spatial * x.shape[0] * x.shape[1]
    scale = _arg(args, kwargs, 2, "scale_factor", default=None)
    if scale is None:
        raise ValueError("interpolate needs size or scale_factor, got neither")
    if isinstance(scale, tuple | list) and len(scale) == x.ndim - 2:
        return int(x.numel() * math.prod(scale))
    return int(x.numel() * scale ** (x.ndim - 2))


def _matmul(*args: Any, **kwargs: Any) -> int:
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other", "mat2")
    return math.prod(a.shape) * b.shape[-1]  # (..., n, k) x (..., k, p): all of a times p


def _addmm(*args: Any, **kwargs: Any) -> int:
    bias, a, b = (_arg(args, kwargs, i, name) for i, name in enumerate(("input", "mat1", "mat2")))
    added = (
        math.prod(bias.shape) if kwargs.get("beta", 1) != 0 else 0
    )  # the bias as given, unbroadcast
    return math.prod(a.shape) * b.shape[-1] + added


def _elementwise(*args: Any, **kwargs: Any) -> int:
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    if not isinstance(a, Tensor):
        return b.numel() if isinstance(b, Tensor) else 1
    if not isinstance(b, Tensor):
        return a.numel()
    # ptflops aligns the shapes on the left, not on the right as broadcasting does: the same for
    # equal ranks; (1, 3, 4) with (4,) counts 4·3·4, not 3·4
    rank = max(a.ndim, b.ndim)
    sa, sb = (list(t.shape) + [1] * (rank - t.ndim) for t in (a, b))
    return math.prod(max(i, j) for i, j in zip(sa, sb, strict=True))


_POOLS = tuple(
    f"{kind}_pool{n}d" for kind in ("avg", "max", "adaptive_avg", "adaptive_max") for n in (1, 2, 3)
)
_FUNCTIONALS: tuple[tuple[object, str, OpRule], ...] = (
    *(
        (F, name, _first_numel)
        for name in ("relu", "prelu", "elu", "relu6", "gelu", "silu", "softmax", *_POOLS)
    ),
    (F, "interpolate", _interpolate),
    (F, "upsample", _interpolate),
)
_TENSOR_OPS: tuple[tuple[object, str, OpRule], ...] = (
    *(
        (owner, name, _matmul)
        for owner in (torch, torch.Tensor)
        for name in ("matmul", "mm", "bmm")
    ),
    (torch, "addmm", _addmm),
    (torch.Tensor, "addmm", _addmm),
    (torch, "baddbmm", _addmm),
    *((owner, name, _elementwise) for owner in (torch, torch.Tensor) for name in ("mul", "add")),
)


@dataclass
class PtflopsCount:
    """The running count of a `ptflops_counting` block: MACs so far, of the whole batch."""

    macs: int = 0


def _counted_modules(root: nn.Module) -> list[nn.Module]:
    """The outermost modules of a listed type (ptflops sums those and skips what they contain).
    A module shared by two parents counts once per call here, once per parent in ptflops."""
    found, seen, stack = [], set(), [root]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if type(m) in MODULE_RULES:
            found.append(m)
        else:
            stack.extend(m.children())
    return found


# Calls the model does not make, which ptflops on real tensors outside any mode never sees: torch's
# Python decompositions (the kernels of meta and fake tensors) calling torch.mm, torch.mul, ...;
# and a torch-function mode (`with torch.device("meta")`) or subclass re-dispatching a call, where
# Tensor methods are looked up again by name, so `x * y` would reach the patched Tensor.mul.
_TORCH_KERNELS = ("torch._decomp", "torch._refs", "torch._prims", "torch._meta_registrations")


def _called_by_model(caller: FrameType) -> bool:
    return caller.f_code.co_name != "__torch_function__" and not caller.f_globals.get(
        "__name__", ""
    ).startswith(_TORCH_KERNELS)


def _counting_op(op: Callable[..., Any], rule: OpRule, count: PtflopsCount) -> Callable[..., Any]:
    # a plain function, so set on torch.Tensor it binds as a method like the original
    @functools.wraps(op)
    def counted(*args: Any, **kwargs: Any) -> Any:
        if _called_by_model(sys._getframe(1)):
            count.macs += int(rule(*args, **kwargs))
        return op(*args, **kwargs)

    return counted


def _counting_hook(rule: ModuleRule, count: PtflopsCount) -> Callable[..., None]:
    def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        count.macs += int(rule(m, args, kwargs, out))

    return hook


_active = False


@contextmanager
def ptflops_counting(module: nn.Module) -> Iterator[PtflopsCount]:
    """Count `module`'s forwards in the ptflops convention while the block runs. The hooks and the
    patched torch attributes are removed on exit, also when the block raises. The patches are
    process-wide while the block runs (other threads see them); not re-entrant."""
    global _active
    if _active:
        raise RuntimeError(
            "ptflops_counting is already active; nesting it would count every op twice"
        )
    _active = True
    count = PtflopsCount()
    handles = []
    saved: list[tuple[object, str, object]] = []  # (owner, name, own attribute or _MISSING)
    with torch_ops():  # the channel-wise fusion as the torch ops ptflops sees
        try:
            for m in _counted_modules(module):
                hook = _counting_hook(MODULE_RULES[type(m)], count)
                handles.append(m.register_forward_hook(hook, with_kwargs=True))
            for owner, name, op_rule in (*_FUNCTIONALS, *_TENSOR_OPS):
                own = vars(owner).get(name, _MISSING)  # Tensor methods live on a base class
                setattr(owner, name, _counting_op(getattr(owner, name), op_rule, count))
                saved.append((owner, name, own))
            yield count
        finally:
            for owner, name, own in reversed(saved):
                if own is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, own)
            for handle in handles:
                handle.remove()
            _active = False


def ptflops_macs(module: nn.Module, *inputs: Any) -> int:
    """MACs per image of `module(*inputs)` in ptflops' convention; inputs[0] is (B, ...). Like
    ptflops it runs in eval mode (the previous modes are restored); meta tensors work."""
    if not inputs or not isinstance(inputs[0], Tensor) or inputs[0].ndim == 0:
        first = inputs[0] if inputs else None
        got = f"shape {tuple(first.shape)}" if isinstance(first, Tensor) else type(first).__name__
        raise ValueError(f"ptflops_macs needs a batched tensor (B, ...) as first input, got {got}")
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with ptflops_counting(module) as count:
            module(*inputs)
    finally:
        for m, training in modes:
            m.training = training
    return count.macs // inputs[0].shape[0]
