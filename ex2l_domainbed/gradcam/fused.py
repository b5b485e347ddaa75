"""Fused Triton kernel: two Grad-CAM maps and their overlap in one pass, hand-written backward.

For a global-average-pooled head, Grad-CAM's channel weights do not depend on position,
so with a feature map `A` [B, K, h, w] and weights `W` [B, 2, K] (row 0: label head,
row 1: confounder head; computed outside with ordinary autograd ops) the maps are

    maps[b, m] = relu(sum_k W[b, m, k] * A[b, k])            [B, 2, h, w]

and the overlap is a per-sample similarity of maps[:, 0] and maps[:, 1], the same
measures as `overlap.py` (smooth epsilon, reductions in >= float32).

Why fuse: the eager version reads `A` once for the einsum, materialises the maps, then
launches a handful of small reduction kernels, and autograd saves and re-reads all of it.
Here the forward reads `A` exactly once (one program per sample, looping over K-chunks)
and does the ReLU, the reductions and the overlap in the epilogue while the two maps
(h*w values each) are still in registers. The backward rebuilds dmaps analytically from
the saved maps (O(h*w) work, so every program just recomputes it) and then reads `A` once
more for dA = W^T dmaps and dW = dmaps A^T on a (sample, K-chunk) grid.

Precision: loads are upcast and everything accumulates in float32, or float64 when an input
is float64 (the Triton interpreter and CUDA both support fp64). The maps are returned in
the input dtype; for fp16/bf16 a float32 copy is also written and kept for the backward,
so the backward sees exactly the maps the forward's overlap was computed from.

Triton is optional: it is imported guarded, and the kernels are `triton.jit`-ed lazily on
first use (cached per interpreter flag), because Triton picks interpreter vs. compiled mode
when `triton.jit` runs, by reading TRITON_INTERPRET; an env var set before the first call
therefore takes effect.
"""
from __future__ import annotations

import functools
import os

import torch

from .overlap import DEFAULT_EPS, OVERLAPS, cosine, pearson, soft_iou

try:  # guarded: the module must import (and `triton_usable` answer) without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

# The kernel's `MEASURE` constexpr is the position here of the eager measure it reproduces
# (its branches test MEASURE == 1 and MEASURE == 2). Names come from the OVERLAPS registry, so a
# measure registered there without a kernel branch is simply not fusable.
_KERNEL_MEASURES = (cosine, pearson, soft_iou)
_MEASURE_ID: dict[str, int] = {name: _KERNEL_MEASURES.index(fn)
                               for name, fn in OVERLAPS.items() if fn in _KERNEL_MEASURES}
FUSED_MEASURES: tuple[str, ...] = tuple(_MEASURE_ID)

# Tile budget (elements of A per K-chunk tile) and the K-chunk caps. At 4 warps a 64x64 fp32
# forward tile (two accumulators + the pipelined loads) takes ~190 registers/thread and the
# 32x64 backward tile ~70, without spills (ptxas, sm_90). Meant for last-layer maps (h*w up
# to a few thousand); BLOCK_N = next_pow2(h*w) lives in registers, so huge maps would spill.
_TILE = 4096
_FWD_BLOCK_K = 64   # forward: one program per sample streams K in chunks of this
_BWD_BLOCK_K = 32   # backward: smaller chunks -> more programs (B * K/32) to fill the GPU


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_usable(device: torch.device | str) -> bool:
    """True when triton imports and can run on `device`: CUDA, or anything under the
    CPU interpreter (TRITON_INTERPRET=1). Never raises."""
    if triton is None:
        return False
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return device.type == "cuda" or _interpret()


# --------------------------------------------------------------------------------------
# Kernel bodies. Plain functions here, `triton.jit`-ed lazily by `_kernels`. The measure is a
# constexpr, so each (measure, flags) combination compiles to straight-line code.
# MEASURE: an index into _KERNEL_MEASURES. N = h*w, padded to BLOCK_N with masks.
# --------------------------------------------------------------------------------------

def _fwd_body(a_ptr, w_ptr, eps_ptr, maps_ptr, acc_ptr, out_ptr,
              K, N,
              s_ab, s_ak, s_an, s_wb, s_wm, s_wk,
              MEASURE: tl.constexpr, STORE_ACC: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per sample: stream A[b] in K-chunks into both pre-ReLU maps, then
    ReLU, store the maps, and reduce them to the overlap in the epilogue."""
    b = tl.program_id(0).to(tl.int64)
    acc_ty = out_ptr.dtype.element_ty          # float32, or float64 for fp64 inputs
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_row = a_ptr + b * s_ab + offs_n[None, :] * s_an
    w_row = w_ptr + b * s_wb

    # Accumulate whole [BLOCK_K, BLOCK_N] tiles (plain FMAs) and reduce over K once after
    # the loop, instead of a cross-warp reduction every iteration.
    p0 = tl.zeros([BLOCK_K, BLOCK_N], dtype=acc_ty)
    p1 = tl.zeros([BLOCK_K, BLOCK_N], dtype=acc_ty)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        a = tl.load(a_row + ks[:, None] * s_ak, mask=mask_k[:, None] & mask_n[None, :],
                    other=0.0).to(acc_ty)
        w0 = tl.load(w_row + ks * s_wk, mask=mask_k, other=0.0).to(acc_ty)
        w1 = tl.load(w_row + s_wm + ks * s_wk, mask=mask_k, other=0.0).to(acc_ty)
        # M = 2 rows is far below tl.dot's minimum tile; broadcast-and-sum instead.
        p0 += w0[:, None] * a
        p1 += w1[:, None] * a

    m0 = tl.maximum(tl.sum(p0, axis=0), 0.0)   # padded columns are exactly 0
    m1 = tl.maximum(tl.sum(p1, axis=0), 0.0)
    maps_row = maps_ptr + b * 2 * N + offs_n
    tl.store(maps_row, m0.to(maps_ptr.dtype.element_ty), mask=mask_n)
    tl.store(maps_row + N, m1.to(maps_ptr.dtype.element_ty), mask=mask_n)
    if STORE_ACC:                              # low-precision maps: keep an fp32 copy
        acc_row = acc_ptr + b * 2 * N + offs_n
        tl.store(acc_row, m0, mask=mask_n)
        tl.store(acc_row + N, m1, mask=mask_n)

    eps = tl.load(eps_ptr)
    if MEASURE == 2:                           # soft_iou
        o = tl.sum(tl.minimum(m0, m1)) / (tl.sum(tl.maximum(m0, m1)) + eps)
    else:
        if MEASURE == 1:                       # pearson: centre over the valid positions
            m0 = tl.where(mask_n, m0 - tl.sum(m0) / N, 0.0)
            m1 = tl.where(mask_n, m1 - tl.sum(m1) / N, 0.0)
        o = tl.sum(m0 * m1) * tl.rsqrt((tl.sum(m0 * m0) + eps) * (tl.sum(m1 * m1) + eps))
    tl.store(out_ptr + b, o)


def _bwd_body(a_ptr, w_ptr, eps_ptr, acc_ptr, go_ptr, gm_ptr, da_ptr, dw_ptr,
              K, N,
              s_ab, s_ak, s_an, s_wb, s_wm, s_wk, s_gb, s_gm, s_gn,
              MEASURE: tl.constexpr, HAS_GO: tl.constexpr, HAS_GM: tl.constexpr,
              NEED_DA: tl.constexpr, NEED_DW: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b, chunk): rebuild dmaps[b] from the saved maps (cheap, O(N), so every
    chunk recomputes it instead of a second launch), mask it by maps > 0 (ReLU), then
    dA[b, chunk] = W[b, :, chunk]^T dmaps and dW[b, :, chunk] = dmaps A[b, chunk]^T."""
    b = tl.program_id(0).to(tl.int64)
    kc = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc_row = acc_ptr + b * 2 * N + offs_n
    m0 = tl.load(acc_row, mask=mask_n, other=0.0)
    m1 = tl.load(acc_row + N, mask=mask_n, other=0.0)
    acc_ty = m0.dtype

    d0 = tl.zeros([BLOCK_N], dtype=acc_ty)
    d1 = tl.zeros([BLOCK_N], dtype=acc_ty)
    if HAS_GO:                                 # d overlap / d maps, times its upstream grad
        eps = tl.load(eps_ptr)
        go = tl.load(go_ptr + b).to(acc_ty)
        if MEASURE == 2:
            # o = sum(min)/(sum(max)+eps). min/max route the gradient to the smaller/larger
            # map and split it 0.5/0.5 at ties (as torch.minimum/maximum do); padded and
            # zero positions are masked by the ReLU below anyway.
            den = tl.sum(tl.maximum(m0, m1)) + eps
            o = tl.sum(tl.minimum(m0, m1)) / den
            lo0 = tl.where(m0 < m1, 1.0, tl.where(m0 == m1, 0.5, 0.0))   # dmin/dm0 = dmax/dm1
            lo1 = 1.0 - lo0                                              # dmin/dm1 = dmax/dm0
            g0 = (lo0 - o * lo1) / den
            g1 = (lo1 - o * lo0) / den
        else:
            x0 = m0
            x1 = m1
            if MEASURE == 1:
                x0 = tl.where(mask_n, m0 - tl.sum(m0) / N, 0.0)
                x1 = tl.where(mask_n, m1 - tl.sum(m1) / N, 0.0)
            n0 = tl.sum(x0 * x0) + eps
            n1 = tl.sum(x1 * x1) + eps
            r = tl.rsqrt(n0 * n1)
            o = tl.sum(x0 * x1) * r
            # d/dx0 [x0.x1 (|x0|^2+eps)^-1/2 (|x1|^2+eps)^-1/2] = x1 r - o x0 / (|x0|^2+eps)
            # For pearson the centring's backward (g - mean g) is the identity here: x0, x1
            # sum to zero, so g0, g1 already do (and are 0 on the padded columns).
            g0 = x1 * r - o * x0 / n0
            g1 = x0 * r - o * x1 / n1
        d0 += go * g0
        d1 += go * g1
    if HAS_GM:                                 # upstream gradient on the returned maps
        gm_row = gm_ptr + b * s_gb + offs_n * s_gn
        d0 += tl.load(gm_row, mask=mask_n, other=0.0).to(acc_ty)
        d1 += tl.load(gm_row + s_gm, mask=mask_n, other=0.0).to(acc_ty)
    d0 = tl.where(m0 > 0, d0, 0.0)             # ReLU; also zeroes the padded columns
    d1 = tl.where(m1 > 0, d1, 0.0)

    ks = kc * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = ks < K
    mask_kn = mask_k[:, None] & mask_n[None, :]
    if NEED_DA:
        w_row = w_ptr + b * s_wb
        w0 = tl.load(w_row + ks * s_wk, mask=mask_k, other=0.0).to(acc_ty)
        w1 = tl.load(w_row + s_wm + ks * s_wk, mask=mask_k, other=0.0).to(acc_ty)
        da = w0[:, None] * d0[None, :] + w1[:, None] * d1[None, :]
        tl.store(da_ptr + b * K * N + ks[:, None] * N + offs_n[None, :],
                 da.to(da_ptr.dtype.element_ty), mask=mask_kn)
    if NEED_DW:
        a = tl.load(a_ptr + b * s_ab + ks[:, None] * s_ak + offs_n[None, :] * s_an,
                    mask=mask_kn, other=0.0).to(acc_ty)
        dw_row = dw_ptr + b * 2 * K + ks
        tl.store(dw_row, tl.sum(a * d0[None, :], axis=1).to(dw_ptr.dtype.element_ty),
                 mask=mask_k)
        tl.store(dw_row + K, tl.sum(a * d1[None, :], axis=1).to(dw_ptr.dtype.element_ty),
                 mask=mask_k)


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool):
    """(forward, backward) kernels, jit-ed on first use; one pair per interpreter flag,
    since `triton.jit` fixes the mode when it runs."""
    del interpret  # only part of the cache key; triton reads the env var itself
    return triton.jit(_fwd_body), triton.jit(_bwd_body)


# --------------------------------------------------------------------------------------
# Launch helpers and the autograd.Function
# --------------------------------------------------------------------------------------

def _blocks(n: int, k: int, cap: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): N padded to a power of two; the K-chunk fills the tile budget
    up to `cap` but never beyond the next power of two of K."""
    block_n = triton.next_power_of_2(max(n, 1))
    block_k = max(1, min(cap, _TILE // block_n, triton.next_power_of_2(max(k, 1))))
    return block_n, block_k


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(a, w, measure, eps):
    """a: [B, K, N] (any strides), w: [B, 2, K]. Returns (overlap, maps, maps_acc)."""
    B, K, N = a.shape
    dtype = torch.promote_types(a.dtype, w.dtype)
    acc = _acc_dtype(dtype)
    out = torch.empty(B, dtype=acc, device=a.device)
    maps = torch.empty(B, 2, N, dtype=dtype, device=a.device)
    maps_acc = maps if dtype == acc else torch.empty(B, 2, N, dtype=acc, device=a.device)
    if B == 0:
        return out, maps, maps_acc
    eps_t = torch.full((1,), eps, dtype=acc, device=a.device)
    # fp64 tiles take twice the registers: halve the chunk (64x64 fp64 hits 255 regs/thread).
    cap = _FWD_BLOCK_K // 2 if acc == torch.float64 else _FWD_BLOCK_K
    block_n, block_k = _blocks(N, K, cap)
    fwd, _ = _kernels(_interpret())
    fwd[(B,)](a, w, eps_t, maps, maps_acc, out, K, N,
              *a.stride(), *w.stride(),
              MEASURE=_MEASURE_ID[measure], STORE_ACC=maps_acc is not maps,
              BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4)
    return out, maps, maps_acc


def _backward(a, w, maps_acc, g_overlap, g_maps, measure, eps, need_da, need_dw):
    """Gradients (dA [B, K, N] contiguous or None, dW [B, 2, K] or None)."""
    B, K, N = a.shape
    da = torch.empty(B, K, N, dtype=a.dtype, device=a.device) if need_da else None
    dw = torch.empty(B, 2, K, dtype=w.dtype, device=w.device) if need_dw else None
    if B == 0 or K == 0:
        return da, dw
    if g_overlap is None and g_maps is None:
        return (da.zero_() if need_da else None), (dw.zero_() if need_dw else None)
    eps_t = torch.full((1,), eps, dtype=maps_acc.dtype, device=a.device)
    go = g_overlap.contiguous() if g_overlap is not None else eps_t  # dummy ptr if absent
    gm = g_maps if g_maps is not None else maps_acc
    block_n, block_k = _blocks(N, K, _BWD_BLOCK_K)
    _, bwd = _kernels(_interpret())
    bwd[(B, triton.cdiv(K, block_k))](
        a, w, eps_t, maps_acc, go, gm,
        da if need_da else maps_acc, dw if need_dw else maps_acc,  # dummies when unused
        K, N, *a.stride(), *w.stride(), *gm.stride(),
        MEASURE=_MEASURE_ID[measure], HAS_GO=g_overlap is not None,
        HAS_GM=g_maps is not None, NEED_DA=need_da, NEED_DW=need_dw,
        BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4)
    return da, dw


class _FusedMapsOverlap(torch.autograd.Function):
    """autograd wrapper: forward and backward are one Triton launch each."""

    @staticmethod
    def forward(ctx, features, weights, measure, eps):
        B, K, h, w = features.shape
        a = features.flatten(2)                # a view for contiguous and channels_last
        overlap, maps, maps_acc = _forward(a, weights, measure, eps)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, weights, maps_acc)
        ctx.measure, ctx.eps, ctx.hw = measure, eps, (h, w)
        return overlap, maps.view(B, 2, h, w)

    @staticmethod
    def backward(ctx, g_overlap, g_maps):
        a, weights, maps_acc = ctx.saved_tensors
        if g_maps is not None:
            g_maps = g_maps.flatten(2)
        da, dw = _backward(a, weights, maps_acc, g_overlap, g_maps, ctx.measure, ctx.eps,
                           ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if da is not None:
            da = da.view(a.shape[0], a.shape[1], *ctx.hw)
        return da, dw, None, None


def fused_maps_overlap(features: torch.Tensor, weights: torch.Tensor, measure: str = "cosine",
                       eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Both Grad-CAM maps and their overlap from one fused Triton kernel.

    features: [B, K, h, w]; weights: [B, 2, K] (row 0 label head, row 1 confounder head).
    Returns (overlap [B], maps [B, 2, h, w]) with maps = relu(einsum('bmk,bkhw->bmhw')) and
    overlap = `overlap.overlap(maps[:, 0], maps[:, 1], measure, eps)`. Differentiable in
    both inputs (hand-written Triton backward). Overlap is float32 (float64 for float64
    inputs); maps have the promoted input dtype.
    """
    if measure not in FUSED_MEASURES:
        raise ValueError(f"Unknown or unsupported overlap measure {measure!r} for the fused "
                         f"kernel; choose one of {', '.join(FUSED_MEASURES)}.")
    if not (isinstance(features, torch.Tensor) and isinstance(weights, torch.Tensor)):
        raise ValueError("features and weights must be torch tensors.")
    if features.dim() != 4:
        raise ValueError(f"features must be [B, K, h, w]; got shape {tuple(features.shape)}.")
    if weights.dim() != 3:
        raise ValueError(f"weights must be [B, 2, K]; got shape {tuple(weights.shape)}.")
    B, K, h, w = features.shape
    if weights.shape[1] != 2:
        raise ValueError(f"weights must hold M=2 rows (label, confounder) per sample; "
                         f"got M={weights.shape[1]} (shape {tuple(weights.shape)}).")
    if weights.shape[0] != B or weights.shape[2] != K:
        raise ValueError(f"weights {tuple(weights.shape)} do not match features "
                         f"{tuple(features.shape)}; expected ({B}, 2, {K}).")
    if h * w == 0:
        raise ValueError(f"features have an empty spatial map: {tuple(features.shape)}.")
    for name, t in (("features", features), ("weights", weights)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point; got {t.dtype}.")
    if features.device != weights.device:
        raise ValueError(f"features ({features.device}) and weights ({weights.device}) must "
                         f"be on the same device.")
    if not triton_usable(features.device):
        why = "triton is not installed" if triton is None else \
            f"device {features.device} is not CUDA"
        raise ValueError(f"The fused Triton Grad-CAM kernel cannot run here ({why}); use "
                         f"backend 'closed_form', or set TRITON_INTERPRET=1 to run the "
                         f"kernel on the CPU.")
    return _FusedMapsOverlap.apply(features, weights, measure, float(eps))
