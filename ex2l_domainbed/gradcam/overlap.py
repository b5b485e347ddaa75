"""Similarity of two non-negative maps, with bounded gradients at (near-)zero maps.

Each measure takes two batches of maps `a, b` of shape `[B, ...]` (flattened per sample)
and returns one value per sample, `[B]`. Why not `F.cosine_similarity`: its gradient
grows like 1/||a|| and reaches ~1e8 at an all-zero map, which is exactly where an
overlap penalty pushes Grad-CAM maps. Here every normalisation uses a *smooth* epsilon,
sqrt(||a||^2 + eps), which bounds the gradient by about 1/sqrt(eps).

- `cosine`   a.b / sqrt((|a|^2 + eps)(|b|^2 + eps))          in [0, 1] for a, b >= 0
- `pearson`  cosine of the mean-centred maps, same smoothing    in [-1, 1]
- `soft_iou` sum(min(a, b)) / (sum(max(a, b)) + eps)           in [0, 1]; eps only in the
             denominator, so two empty maps score 0, not 1. Scale-dependent: a model can
             lower it by shrinking one map, which is why cosine is the default.

Reductions run in at least float32, whatever the maps' dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

DEFAULT_EPS = 1e-6

Measure = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _flat(a: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1)
    return a.to(torch.promote_types(a.dtype, torch.float32))


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Smooth-epsilon cosine similarity per sample."""
    a, b = _flat(a), _flat(b)
    dot = (a * b).sum(1)
    return dot * torch.rsqrt(((a * a).sum(1) + eps) * ((b * b).sum(1) + eps))


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Smooth-epsilon Pearson correlation per sample (0 for a constant map)."""
    a, b = _flat(a), _flat(b)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    dot = (a * b).sum(1)
    return dot * torch.rsqrt(((a * a).sum(1) + eps) * ((b * b).sum(1) + eps))


def soft_iou(a: torch.Tensor, b: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Ruzicka similarity sum(min)/sum(max) per sample, eps in the denominator only."""
    a, b = _flat(a), _flat(b)
    return torch.minimum(a, b).sum(1) / (torch.maximum(a, b).sum(1) + eps)


# The registry: the one place that names the measures (the hparam's choices, the fused
# kernel's ids and every error message come from it).
OVERLAPS: dict[str, Measure] = {"cosine": cosine, "pearson": pearson, "soft_iou": soft_iou}
MEASURES: tuple[str, ...] = tuple(OVERLAPS)


def get_measure(name: str) -> Measure:
    """The measure called `name`, or a ValueError listing the valid names."""
    try:
        return OVERLAPS[name]
    except KeyError:
        raise ValueError(
            f"Unknown overlap measure {name!r}; choose one of {', '.join(MEASURES)}.") from None


def overlap(a: torch.Tensor, b: torch.Tensor, measure: str = "cosine",
            eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Per-sample similarity `[B]` of maps `a` and `b` under the named measure."""
    return get_measure(measure)(a, b, eps)
