"""The channel-wise MLP of Eq. 7–8 over columns: out[p] = w₂ᵀ GELU(W₁ z[:, p] + b₁) + b₂.

z (E, P) holds one column per (token, channel); W₁ (h, E), b₁ (h), w₂ (1, h), b₂ (1). Two
implementations of the same function, neither of which stores the (h, P) hidden layer:
- `native`: the C kernel `kernels/channel_mlp.c` (CPU, fp32 or bf16 columns): one pass over the
  columns in L1-sized tiles, erf and exp once per hidden value, fp32 arithmetic with one rounding of
  the outputs, columns split between `torch.get_num_threads()` threads.
- `torch`: PyTorch ops on cache-sized column blocks, in the columns' dtype (any device or dtype).
`auto` takes `native` where it applies and the kernel could be built, `torch` otherwise. Op
counters see only PyTorch ops, so under a torch dispatch mode (FlopCounterMode, fake tensors) and
inside `torch_ops()` (msr's ptflops counter) `auto` takes `torch`: counts are those of the same
arithmetic either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

Impl = Literal["auto", "native", "torch"]
IMPLS = ("auto", "native", "torch")
_NATIVE_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}
_torch_ops_depth = 0


@contextlib.contextmanager
def torch_ops() -> Iterator[None]:
    """Inside the block, `auto` runs the PyTorch implementation (for counters that patch torch)."""
    global _torch_ops_depth
    _torch_ops_depth += 1
    try:
        yield
    finally:
        _torch_ops_depth -= 1


def channel_mlp(
    z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, impl: Impl = "auto"
) -> Tensor:
    """(E, P) -> (P,); parameters in any float dtype (the torch path computes in z's dtype)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; accepted: {', '.join(IMPLS)}")
    if impl != "torch":
        reason = native_unavailable(z, w1)
        if reason is None:
            return _Native.apply(z.contiguous(), w1, b1, w2, b2)
        if impl == "native":
            raise RuntimeError(f"the native channel-MLP kernel cannot run here: {reason}")
    params = (w1, b1, w2, b2)
    return _Torch.apply(z, *(t.to(z.dtype) for t in params))[0]


def native_unavailable(z: Tensor, w1: Tensor) -> str | None:
    """Why the native kernel does not apply to these columns, or None when it does."""
    if _torch_ops_depth or _get_current_dispatch_mode() is not None:
        return "an op counter or dispatch mode is active (it must see every op)"
    if z.device.type != "cpu":
        return f"columns on {z.device.type} (the kernel is for CPU)"
    if z.dtype not in _NATIVE_DTYPES:
        return f"dtype {z.dtype} (the kernel takes float32 and bfloat16)"
    lib = _library()
    if lib is None:
        return "the kernel could not be built (see the log) or MSR_KERNELS=0"
    hidden, branches = w1.shape
    max_e, max_h = lib.msr_channel_mlp_max_branches(), lib.msr_channel_mlp_max_hidden()
    if branches > max_e or hidden > max_h:
        return f"E={branches}, h={hidden} (the kernel takes E ≤ {max_e}, h ≤ {max_h})"
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        from msr.projectors import kernels
    except ImportError:  # this file runs inside an exported model, without msr: PyTorch ops
        return None
    lib = kernels.load("channel_mlp")
    if lib is None:
        return None
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    for dt in _NATIVE_DTYPES.values():
        fwd = getattr(lib, f"msr_channel_mlp_forward_{dt}")
        fwd.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr, ptr, f32, i64, i64]
        fwd.restype = None
        bwd = getattr(lib, f"msr_channel_mlp_backward_{dt}")
        bwd.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ptr, ptr, ptr, i64, i64]
        bwd.restype = None
    for limit in ("max_branches", "max_hidden", "chunk"):
        getattr(lib, f"msr_channel_mlp_{limit}").restype = i64
    return lib


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msr-channel-mlp")


def _run(calls: list[functools.partial[None]]) -> None:
    """Run the kernel calls on torch's thread count (ctypes releases the GIL during each)."""
    if len(calls) == 1:
        calls[0]()
        return
    for f in [_pool(len(calls)).submit(c) for c in calls]:
        f.result()


def _ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) column ranges, one per thread, each starting on a multiple of `chunk`."""
    chunks = -(-total // chunk)
    parts = max(1, min(torch.get_num_threads(), chunks))
    bounds = [min(total, (chunks * i // parts) * chunk) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


class _Native(torch.autograd.Function):
    """The C kernel; parameters are used in fp32 and their gradients summed in double."""

    @staticmethod
    def forward(ctx, z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        ctx.save_for_backward(z, w1, b1, w2, b2)
        lib = _library()
        assert lib is not None
        E, P = z.shape
        fw1, fb1, fw2 = _f32(w1), _f32(b1), _f32(w2)
        out = torch.empty(P, dtype=z.dtype)
        fn = getattr(lib, f"msr_channel_mlp_forward_{_NATIVE_DTYPES[z.dtype]}")
        args = (z.data_ptr(), out.data_ptr(), P, E, fw1.shape[0])
        weights = (fw1.data_ptr(), fb1.data_ptr(), fw2.data_ptr(), float(b2.detach().float()))
        _run([functools.partial(fn, *args, *weights, a, b) for a, b in _ranges(P, 64)])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, w1, b1, w2, b2 = ctx.saved_tensors
        lib = _library()
        assert lib is not None
        E, P = z.shape
        H = w1.shape[0]
        grad = grad.to(z.dtype).contiguous()
        fw1, fb1, fw2 = _f32(w1), _f32(b1), _f32(w2)
        gz = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        chunk = lib.msr_channel_mlp_chunk()
        S = H * E + 2 * H + 1  # gw1, gb1, gw2, gb2
        sums = torch.zeros(-(-P // chunk), S, dtype=torch.float64)  # one row per chunk of columns
        fn = getattr(lib, f"msr_channel_mlp_backward_{_NATIVE_DTYPES[z.dtype]}")
        calls = [
            functools.partial(
                fn,
                z.data_ptr(),
                grad.data_ptr(),
                gz.data_ptr() if gz is not None else None,
                sums.data_ptr() + (a // chunk) * S * 8,
                P,
                E,
                H,
                fw1.data_ptr(),
                fb1.data_ptr(),
                fw2.data_ptr(),
                a,
                b,
            )
            for a, b in _ranges(P, chunk)
        ]
        _run(calls)
        total = sums.sum(dim=0)
        gw1 = total[: H * E].view(H, E).to(w1.dtype)
        gb1 = total[H * E : H * E + H].to(b1.dtype)
        gw2 = total[H * E + H : H * E + 2 * H].view(1, H).to(w2.dtype)
        gb2 = total[H * E + 2 * H :].to(b2.dtype)
        return gz, gw1, gb1, gw2, gb2


class _Torch(torch.autograd.Function):
    """PyTorch ops over cache-sized column blocks; the hidden activations (h, P) are never stored:
    the backward recomputes them block by block."""

    @staticmethod
    def forward(ctx, z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        ctx.save_for_backward(z, w1, b1, w2, b2)
        out = torch.empty(1, z.shape[1], dtype=z.dtype, device=z.device)
        for cols in _blocks(z, w1.shape[0]):
            hid = F.gelu(torch.addmm(b1[:, None], w1, z[:, cols]))  # (h, P_blk)
            torch.addmm(b2[:, None], w2, hid, out=out[:, cols])  # (1, P_blk)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, w1, b1, w2, b2 = ctx.saved_tensors
        acc = torch.float32
        gz = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        gw1 = torch.zeros(w1.shape, dtype=acc, device=z.device)
        gb1 = torch.zeros(b1.shape, dtype=acc, device=z.device)
        gw2 = torch.zeros(w2.shape, dtype=acc, device=z.device)
        for cols in _blocks(z, w1.shape[0]):
            zc, gc = z[:, cols], grad[:, cols]
            pre = torch.addmm(b1[:, None], w1, zc)  # (h, P_blk), recomputed
            gw2 += torch.mv(F.gelu(pre), gc[0]).to(acc)  # (h, P_blk) x (P_blk,) -> (h,) = w₂ row
            gpre = torch.ops.aten.gelu_backward(w2.T * gc, pre)  # (h, P_blk)
            gw1 += (gpre @ zc.T).to(acc)  # (h, P_blk) x (P_blk, E) -> (h, E)
            gb1 += gpre.sum(dim=1, dtype=acc)
            if gz is not None:
                torch.mm(w1.T, gpre, out=gz[:, cols])  # (E, h) x (h, P_blk) -> (E, P_blk)
        gb2 = grad.sum(dim=1, dtype=acc)
        return gz, gw1.to(w1.dtype), gb1.to(b1.dtype), gw2.to(w2.dtype), gb2.to(b2.dtype)


def _blocks(z: Tensor, hidden: int) -> list[slice]:
    """Column blocks of z whose (h, P_blk) activations fit in cache on CPU; one block on GPU."""
    total = z.shape[1]
    step = total if z.device.type != "cpu" else max(1024, (1 << 21) // hidden)
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


__all__ = ["IMPLS", "Impl", "channel_mlp", "native_unavailable", "torch_ops"]
