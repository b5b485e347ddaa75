"""The one entry point: differentiable Grad-CAM maps of several heads on one feature map.

    cam = gradcam(A, [label_head, conf_head], [y, a], neck=dropout, measure="cosine")
    loss = ce(cam.logits[0], y) + lam * cam.overlap.mean()

`A` [B, K, h, w] is the tensor that enters global average pooling; each head maps the
pooled (and `neck`-transformed) vector to logits. The logits come back in `cam.logits`,
so training never runs a head twice. Gradients of anything built from `cam` reach the
feature map and every head parameter exactly as double-backprop Grad-CAM would.

Backends (`backend=`):
- `closed_form`: for GAP heads the score's gradient is the same at every position, so the
  channel weights are the head's vector-Jacobian product at the pooled vector, / (h*w):
  a row gather `t @ W` for a linear head, one head-only VJP for an MLP (or active
  dropout). No backward through the backbone, no `[B, K, h, w]` gradient tensor.
- `autograd`: `torch.autograd.grad(score, A, create_graph=True)`, then the spatial mean.
  Works for any head and any pooling; the oracle in tests. Differentiates per sample when
  the head couples samples (BatchNorm on batch statistics).
- `fused`: closed-form weights, then one Triton kernel for both maps, ReLU and the overlap,
  with a hand-written backward (CUDA, or the CPU interpreter with TRITON_INTERPRET=1).
- `auto`: fused on CUDA when it applies, else closed form; autograd whenever the closed
  form does not hold (custom pooling, sample-coupling heads). Never silently inexact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ex2l_domainbed.gradcam import fused
from ex2l_domainbed.gradcam import overlap as overlap_lib
from ex2l_domainbed.gradcam.heads import couples_samples, is_pointwise_identity
from ex2l_domainbed.gradcam.scores import check_score, score_cotangent, score_values

BACKENDS = ("auto", "closed_form", "autograd", "fused")
Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GradCAM:
    """Maps `[B, M, h, w]` (after ReLU), each head's logits, the channel weights `[B, M, K]`,
    the per-sample overlap of maps 0 and 1 (when a measure was asked for), the vector the
    heads consumed (after `neck`), the classes explained, and the backend used."""

    maps: torch.Tensor
    logits: list
    weights: torch.Tensor
    overlap: Optional[torch.Tensor]
    pooled: torch.Tensor
    targets: list
    backend: str


def closed_form_problem(heads: Sequence[Head], neck: Optional[Head],
                        pooling: Optional[Head]) -> Optional[str]:
    """Why the closed form is not exact for these heads, or None when it is."""
    if pooling is not None:
        return "a custom pooling is used instead of global average pooling"
    for module in [neck, *heads]:
        if couples_samples(module):
            return ("the head uses batch statistics (BatchNorm in training mode), so each "
                    "sample's logits depend on the whole batch")
    return None


def choose_backend(backend: str, features: torch.Tensor, heads: Sequence[Head],
                   neck: Optional[Head], pooling: Optional[Head], measure: Optional[str]) -> str:
    """Resolve `auto`, and refuse a backend that would be wrong or cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown Grad-CAM backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    problem = closed_form_problem(heads, neck, pooling)
    fusable = (len(heads) == 2 and measure in fused.FUSED_MEASURES)
    if backend == "auto":
        if problem is not None:
            return "autograd"
        if fusable and features.is_cuda and fused.triton_usable(features.device):
            return "fused"
        return "closed_form"
    if backend in ("closed_form", "fused") and problem is not None:
        raise ValueError(f"Grad-CAM backend {backend!r} is not exact here: {problem}. "
                         "Use backend='autograd' (or 'auto').")
    if backend == "fused" and not fusable:
        raise ValueError("Grad-CAM backend 'fused' computes exactly two maps and their overlap "
                         f"with a measure in {fused.FUSED_MEASURES}; got {len(heads)} heads and "
                         f"measure={measure!r}. Use backend='closed_form'.")
    return backend


def _target(out: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """The class to explain: the given one, or the head's own prediction when None."""
    return out.detach().argmax(1) if y is None else y


def _closed_form_weights(features, heads, targets, neck, score):
    """Channel weights J(p)^T t / (h*w) and the logits, from one forward of each head."""
    pooled = features.mean((2, 3))
    if not pooled.requires_grad:
        pooled.requires_grad_()  # lets the head-only VJP run on a feature map without grad
    z = pooled if neck is None else neck(pooled)
    linear_ok = is_pointwise_identity(neck)
    logits, weights, explained = [], [], []
    for head, y in zip(heads, targets):
        out = head(z)
        y = _target(out, y)
        t = score_cotangent(out, y, score)
        if linear_ok and isinstance(head, nn.Linear):
            w = t @ head.weight  # GAP + linear: the (softmax-centred) target row of W
        else:
            w = torch.autograd.grad(out, pooled, grad_outputs=t, create_graph=True)[0]
        logits.append(out)
        weights.append(w)
        explained.append(y)
    n = features.shape[2] * features.shape[3]
    return torch.stack(weights, 1) / n, logits, z, explained


def _autograd_weights(features, heads, targets, neck, pooling, score, per_sample):
    """Spatial mean of d score / d A, taken with create_graph (exact for any head)."""
    if not features.requires_grad:
        features = features.detach().requires_grad_()
    pooled = features.mean((2, 3)) if pooling is None else pooling(features)
    z = pooled if neck is None else neck(pooled)
    logits, weights, explained = [], [], []
    for head, y in zip(heads, targets):
        out = head(z)
        y = _target(out, y)
        s = score_values(out, y, score)
        if per_sample:  # only sample b's own score explains sample b
            grads = torch.stack([
                torch.autograd.grad(s[b], features, create_graph=True, retain_graph=True)[0][b]
                for b in range(len(s))])
        else:
            grads = torch.autograd.grad(s.sum(), features, create_graph=True, retain_graph=True)[0]
        logits.append(out)
        weights.append(grads.mean((2, 3)))
        explained.append(y)
    return torch.stack(weights, 1), logits, z, explained


def gradcam(features: torch.Tensor, heads: Sequence[Head],
            targets: Sequence[Optional[torch.Tensor]], *,
            neck: Optional[Head] = None, pooling: Optional[Head] = None,
            score: str = "log_softmax", backend: str = "auto", measure: Optional[str] = None,
            eps: float = overlap_lib.DEFAULT_EPS,
            detach_weights: Sequence[bool] = ()) -> GradCAM:
    """Grad-CAM maps of `heads[m]` for per-sample classes `targets[m]` on `features`.

    A target of None explains each sample's predicted class (argmax, not differentiated).
    `neck` (e.g. the featurizer's dropout) is applied once to the pooled vector and shared
    by all heads; `pooling` replaces global average pooling (forces the autograd backend);
    `measure` (a name in `overlap.MEASURES`) also returns the overlap of maps 0 and 1.
    `detach_weights[m]` true makes map m's channel weights constants: gradients then reach
    that map only through the feature map, never its head (what Grad-CAM libraries do).
    Works under `torch.no_grad()` too (results are then detached).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, K, h, w], got shape {tuple(features.shape)}")
    if len(heads) == 0 or len(heads) != len(targets):
        raise ValueError(f"need one target tensor per head, got {len(heads)} heads and "
                         f"{len(targets)} targets")
    if measure is not None:
        overlap_lib.get_measure(measure)
        if len(heads) != 2:
            raise ValueError(f"an overlap needs exactly two heads, got {len(heads)}")
    check_score(score)
    targets = [None if y is None else torch.as_tensor(y, device=features.device).long().reshape(-1)
               for y in targets]
    chosen = choose_backend(backend, features, heads, neck, pooling, measure)

    grad_enabled = torch.is_grad_enabled()
    with torch.enable_grad():
        if chosen == "autograd":
            per_sample = any(couples_samples(m) for m in [neck, *heads])
            weights, logits, pooled, explained = _autograd_weights(
                features, heads, targets, neck, pooling, score, per_sample)
        else:
            weights, logits, pooled, explained = _closed_form_weights(features, heads, targets,
                                                                      neck, score)
        weights = weights.to(features.dtype)
        if any(detach_weights):
            weights = torch.stack([w.detach() if i < len(detach_weights) and detach_weights[i]
                                   else w for i, w in enumerate(weights.unbind(1))], 1)
        if chosen == "fused":
            sim, maps = fused.fused_maps_overlap(features, weights, measure, eps)
        else:
            b, k, h, w = features.shape
            maps = torch.relu(torch.bmm(weights, features.reshape(b, k, h * w)))
            maps = maps.reshape(b, len(heads), h, w)
            sim = None if measure is None else overlap_lib.overlap(maps[:, 0], maps[:, 1],
                                                                   measure, eps)
    result = GradCAM(maps, logits, weights, sim, pooled, explained, chosen)
    if not grad_enabled:
        result = GradCAM(maps.detach(), [o.detach() for o in logits], weights.detach(),
                         None if sim is None else sim.detach(), pooled.detach(), explained,
                         chosen)
    return result
