"""Inspect a head to decide which Grad-CAM backend is exact for it.

The closed form needs two things: the feature map enters the head only through global
average pooling (the API guarantees this unless a custom `pooling` is given), and each
sample's logits depend on that sample alone. BatchNorm in training mode (or without
running statistics) breaks the second: the logits then depend on batch statistics, the
summed-score trick adds cross-sample terms, and only per-sample differentiation is exact.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

Head = Callable


def couples_samples(head: Optional[Head]) -> bool:
    """True when `head` mixes samples of a batch (BatchNorm using batch statistics)."""
    if not isinstance(head, nn.Module):
        return False  # plain functions are assumed per-sample, as in every Grad-CAM library
    for m in head.modules():
        if isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats):
            return True
    return False


def is_pointwise_identity(neck: Optional[Head]) -> bool:
    """True when `neck` is the identity at this moment (None, Identity, inactive dropout)."""
    if neck is None or isinstance(neck, nn.Identity):
        return True
    if isinstance(neck, nn.modules.dropout._DropoutNd):
        return not neck.training or neck.p == 0
    if isinstance(neck, nn.Sequential):
        return all(is_pointwise_identity(m) for m in neck)
    return False
