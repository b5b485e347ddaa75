"""Grad-CAM maps of a trained model's heads on images, for figures and map analysis.

Works for every algorithm here that has a `featurizer` and a `classifier` (ERM, GroupDRO,
EX2L, AttributeDANN); the nuisance head is EX2L's `confounder_classifier` or
AttributeDANN's `adversary` when there is one. Maps explain the true class (and the true
attribute) with the same score EX2L trains with, and come back at image resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ex2l_domainbed.feature_maps import split_featurizer
from ex2l_domainbed.gradcam import gradcam


@dataclass
class HeadMaps:
    """Label-head maps `[B, H, W]`, nuisance-head maps or None, and both heads' predictions."""

    label: torch.Tensor
    nuisance: Optional[torch.Tensor]
    label_pred: torch.Tensor
    nuisance_pred: Optional[torch.Tensor]


def nuisance_head(algorithm) -> Optional[torch.nn.Module]:
    """The head that predicts the attribute, if the algorithm has one."""
    for name in ("confounder_classifier", "adversary"):
        if hasattr(algorithm, name):
            return getattr(algorithm, name)
    return None


@torch.no_grad()
def head_maps(algorithm, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
              score: str = "log_softmax") -> HeadMaps:
    """Grad-CAM of the label head for `y` (and of the nuisance head for `a`), upsampled."""
    algorithm.eval()
    forward_maps, neck = split_featurizer(algorithm.featurizer)
    heads, targets = [algorithm.classifier], [y]
    extra = nuisance_head(algorithm)
    if extra is not None:
        heads.append(extra)
        targets.append(a)
    cam = gradcam(forward_maps(x), heads, targets, neck=neck, score=score, backend="closed_form")
    maps = F.interpolate(cam.maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    maps = maps.clamp_min(0)
    return HeadMaps(maps[:, 0], maps[:, 1] if extra is not None else None,
                    cam.logits[0].argmax(1), cam.logits[1].argmax(1) if extra is not None else None)


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of a map's mass inside the (soft) mask; NaN for an all-zero map."""
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.full_like(total, np.nan))
