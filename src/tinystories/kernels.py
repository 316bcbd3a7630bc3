"""C kernels for attention on the CPU (csrc/kernels.c), built on first use.

fp32 on the CPU, the model calls them where PyTorch spends its time on
overhead rather than arithmetic, and uses PyTorch's own operations otherwise
(other devices and dtypes, no C compiler, TINYSTORIES_KERNELS=0 in the
environment, `ENABLED = False`, or inside `with disabled():`):

- `causal_attention`: whole-sequence causal (and windowed) attention, forward
  and backward, for training and scoring, at head dim 4 or a multiple of 8; at
  head dims of 4-16 the inner products are too short for PyTorch's flash
  kernel, and this runs about 4x faster (benchmarks/README.md).
- `decode_attention`: one decode step: rotates the new query and key heads,
  writes the key and value into the cache and attends, every row at its own
  position, in one call per layer.
- `rms_norm`, `silu_mul`: decoding's RMSNorm (one call instead of PyTorch's
  composite of about ten kernels) and SwiGLU (one instead of four).

They agree with PyTorch to float32 rounding (tests/test_kernels.py), not
bitwise; each is deterministic, whatever the number of threads.

They are compiled with the system's C compiler (`cc`, or $CC) into one shared
library in a per-user cache
(`$TINYSTORIES_CACHE`, else `$XDG_CACHE_HOME/tinystories`, else
`~/.cache/tinystories`), keyed by the source, the flags and the CPU, since
`-march=native` code is only valid on the CPU it was built for, and loaded
with ctypes: no PyTorch headers and no build step at install time. A failed
build is logged (logger `tinystories.kernels`) and leaves PyTorch's path.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ENABLED = os.environ.get("TINYSTORIES_KERNELS", "1") != "0"
"""Whether the model may use the kernels; set False to keep PyTorch's operations (tests, benchmarks)."""

MIN_WORK_PER_THREAD = 1 << 16
"""Multiply-adds (rows x query heads x keys x head dim) a call needs per thread before it splits rows."""

thread_budget: contextvars.ContextVar[int | None] = contextvars.ContextVar("thread_budget", default=None)
"""Threads the kernel may use; None: torch.get_num_threads(). The sampler runs small decode steps on
one PyTorch thread (many tiny kernels, each parallel region costing more than it splits) but leaves
the kernel the threads it had, since one call is a single parallel region over all rows."""

SOURCE = Path(__file__).with_name("csrc") / "kernels.c"
COMPILE = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
# -ffast-math lets the exp loops use glibc's vector expf (its declarations need __FAST_MATH__); the
# kernels never rely on inf or NaN. It is left out of the link on purpose: linked with it, gcc adds
# crtfastmath.o, which switches the whole process to flushing denormals to zero when the library loads.


def _cache_dir() -> Path:
    if os.environ.get("TINYSTORIES_CACHE"):
        return Path(os.environ["TINYSTORIES_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinystories"


def _cpu_id() -> str:
    """What -march=native depends on: the architecture and the CPU's model and feature flags."""
    lines = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    lines.append(line.strip())
                if len(lines) >= 3:
                    break
    except OSError:
        pass
    return "\n".join(lines)


def _build(compiler: str) -> Path:
    """The shared library for this source, flags and CPU, compiled once; written atomically."""
    source = SOURCE.read_bytes()
    flags = " ".join([*COMPILE, "|", *LINK]).encode()
    key = hashlib.sha256(b"\0".join([source, flags, _cpu_id().encode()])).hexdigest()[:16]
    out = _cache_dir() / "kernels" / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    obj = tmp[: -len(".so.tmp")] + ".o.tmp"
    try:
        run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=120)
        run([compiler, *COMPILE, "-c", str(SOURCE), "-o", obj])
        run([compiler, *LINK, obj, "-o", tmp, "-lm"])
        os.replace(tmp, out)
    finally:
        for path in (tmp, obj):
            if os.path.exists(path):
                os.unlink(path)
    return out


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when they cannot be built here (logged once)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: attention runs on PyTorch's operations")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        log.info("kernels not built (%s %s): attention runs on PyTorch's operations", e, detail.decode()[-500:])
        return None
    fn = lib.decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int]
    lib.rms_norm.restype = None
    lib.rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_float]
    lib.silu_mul.restype = None
    lib.silu_mul.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2
    # A (B, T, heads, D) tensor: pointer, b/t/head strides. Then B, T, H, K, D, window, scale, threads.
    strided: list[type[ctypes._SimpleCData[Any]]] = [ctypes.c_void_p, *[ctypes.c_int64] * 3]
    sizes: list[type[ctypes._SimpleCData[Any]]] = [*[ctypes.c_int] * 6, ctypes.c_float, ctypes.c_int]
    lib.attention_forward.restype = ctypes.c_int
    lib.attention_forward.argtypes = strided * 3 + [ctypes.c_void_p] * 2 + sizes
    lib.attention_backward.restype = ctypes.c_int
    lib.attention_backward.argtypes = strided * 3 + [ctypes.c_void_p] * 6 + sizes
    return lib


def available() -> bool:
    """Whether the kernels are switched on and can be used in this process."""
    return ENABLED and _library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """PyTorch's operations instead of the kernels inside the block (the previous setting after it)."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def _loaded() -> ctypes.CDLL:
    """The library, for callers that checked `usable` or `trainable` first."""
    lib = _library()
    assert lib is not None, "a kernel was called without a library; check usable() or trainable() first"
    return lib


def usable(x: torch.Tensor, cache: torch.Tensor) -> bool:
    """Whether the kernels take these operands: fp32 CPU tensors, and kernels built here."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and cache.dtype == torch.float32 and available()


def threads_for(work: int) -> int:
    """Threads for a call of `work` multiply-adds: up to the budget, at least MIN_WORK_PER_THREAD each."""
    budget = thread_budget.get() or torch.get_num_threads()
    return max(1, min(budget, work // MIN_WORK_PER_THREAD))


def decode_attention(
    qkv: torch.Tensor,
    kv: torch.Tensor,
    pos: torch.Tensor,
    rope: torch.Tensor | None,
    n_head: int,
    window: int | None,
    scale: float,
    threads: int = 1,
) -> torch.Tensor:
    """Attention output (B, n_head * D) of one decode step; writes the new keys and values into `kv`.

    qkv: (B, (H + 2K) * D) contiguous fp32, the fused projection (query and key
    heads in RoPE pair order when `rope` is given); rotated in place. kv: one
    layer's cache (B, 2K, M, D). pos: (B,) int64 position of each row's new
    token. rope: (max_pos, D/2, 2) cos and sin, or None. window: a local layer's
    window, or None.
    """
    lib = _loaded()
    B, two_k, M, D = kv.shape
    out = torch.empty(B, n_head * D)
    assert qkv.is_contiguous() and kv.is_contiguous() and pos.dtype == torch.int64 and pos.is_contiguous()
    assert rope is None or (rope.is_contiguous() and rope.dtype == torch.float32)
    status = lib.decode_attention(
        qkv.data_ptr(), None if rope is None else rope.data_ptr(), pos.data_ptr(), kv.data_ptr(), out.data_ptr(),
        B, n_head, two_k // 2, D, M, window or 0, scale, threads,
    )
    if status != 0:
        raise MemoryError("decode_attention: could not allocate scratch memory")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (B, C) contiguous fp32 with weight (C,): what torch.rms_norm computes, in one call."""
    lib = _loaded()
    assert x.is_contiguous() and weight.is_contiguous() and x.dim() == 2
    out = torch.empty_like(x)
    lib.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps)
    return out


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU's silu(gate) * up of h (B, 2F) contiguous fp32, gate columns first: (B, F), in one call."""
    lib = _loaded()
    assert h.is_contiguous() and h.dim() == 2 and h.shape[1] % 2 == 0
    out = torch.empty(h.shape[0], h.shape[1] // 2)
    lib.silu_mul(h.data_ptr(), out.data_ptr(), h.shape[0], h.shape[1] // 2)
    return out


def _strided(x: torch.Tensor) -> list[int]:
    """A (B, T, heads, D) tensor as the kernels take it: pointer, then the b, t and head strides."""
    return [x.data_ptr(), *x.stride()[:3]]


class _CausalAttention(torch.autograd.Function):
    """Causal (optionally windowed) attention with a C forward and backward; see `causal_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, window, scale):  # type: ignore[override]
        B, T, H, D = q.shape
        K = k.shape[2]
        y = torch.empty(B, T, H, D)
        lse = torch.empty(B, H, T)
        status = _loaded().attention_forward(*_strided(q), *_strided(k), *_strided(v), y.data_ptr(), lse.data_ptr(),
                                       B, T, H, K, D, window or 0, scale, torch.get_num_threads())
        if status != 0:
            raise MemoryError("attention_forward: could not allocate scratch memory")
        ctx.save_for_backward(q, k, v, y, lse)
        ctx.window, ctx.scale = window, scale
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        q, k, v, y, lse = ctx.saved_tensors
        B, T, H, D = q.shape
        K = k.shape[2]
        dy = dy.contiguous()
        dq = torch.empty(B, T, H, D)
        dk, dv = torch.zeros(B, K, T, D), torch.zeros(B, K, T, D)  # per (row, head) contiguous: see kernels.c
        status = _loaded().attention_backward(
            *_strided(q), *_strided(k), *_strided(v), y.data_ptr(), dy.data_ptr(), lse.data_ptr(),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), B, T, H, K, D, ctx.window or 0, ctx.scale,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("attention_backward: could not allocate scratch memory")
        return dq, dk.transpose(1, 2), dv.transpose(1, 2), None, None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                     scale: float) -> torch.Tensor:
    """Causal self-attention y (B, T, H, D) of q (B, T, H, D) over k, v (B, T, K, D), differentiable.

    Query i sees keys [max(0, i + 1 - window), i]; query head h reads key/value
    head h // (H / K). Any strides, the last dimension contiguous (the views the
    fused projection gives); fp32 on the CPU, head dim 4 or a multiple of 8
    (see `trainable`). The backward pass recomputes the probabilities from the saved
    log-sum-exp of each query, as flash attention does, so memory stays O(T).
    """
    return _CausalAttention.apply(q, k, v, window, scale)


def trainable(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `causal_attention` takes these operands."""
    return (q.numel() > 0 and (q.shape[-1] == 4 or q.shape[-1] % 8 == 0) and q.stride(-1) == 1
            and k.stride(-1) == 1 and usable(q, k))
