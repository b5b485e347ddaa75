"""Get the last spatial feature map out of a featurizer, ours or upstream DomainBed's.

Grad-CAM needs the tensor that enters global average pooling. This harness's featurizers
expose it (`forward_maps`, then `pool` = GAP + dropout + activation). Upstream DomainBed's
featurizers do not, so for its ResNet and MNIST_CNN the same split is rebuilt from their
submodules, following the layer order its interface documents. Either way
`neck(GAP(forward_maps(x))) == featurizer(x)`, which tests check.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

ForwardMaps = Callable[[torch.Tensor], torch.Tensor]


class UnsupportedFeaturizer(NotImplementedError):
    """A featurizer without a last spatial feature map (e.g. the MLP for vector inputs)."""


def _upstream_resnet_maps(featurizer: nn.Module) -> ForwardMaps:
    def forward_maps(x: torch.Tensor) -> torch.Tensor:
        n = featurizer.network
        if hasattr(n, "forward_features"):  # timm ResNet (upstream's default since ERM++)
            return n.forward_features(x)    # ends at layer4; its head is avg pool + fc
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))
    return forward_maps


def _upstream_mnist_cnn_maps(featurizer: nn.Module) -> ForwardMaps:
    def forward_maps(x: torch.Tensor) -> torch.Tensor:
        f = featurizer
        x = f.bn0(torch.relu(f.conv1(x)))
        x = f.bn1(torch.relu(f.conv2(x)))
        x = f.bn2(torch.relu(f.conv3(x)))
        return f.bn3(torch.relu(f.conv4(x)))
    return forward_maps


def split_featurizer(featurizer: nn.Module) -> tuple[ForwardMaps, Optional[nn.Module]]:
    """Return `(forward_maps, neck)`: x -> A [B, K, h, w], and the module applied after GAP."""
    if hasattr(featurizer, "forward_maps"):
        neck = nn.Sequential(featurizer.dropout, featurizer.activation)
        return featurizer.forward_maps, neck
    network = getattr(featurizer, "network", None)
    if network is not None and hasattr(network, "layer4") and hasattr(featurizer, "dropout"):
        return _upstream_resnet_maps(featurizer), featurizer.dropout
    if all(hasattr(featurizer, f"conv{i}") for i in range(1, 5)) and hasattr(featurizer, "bn3"):
        return _upstream_mnist_cnn_maps(featurizer), None
    raise UnsupportedFeaturizer(
        f"EX2L needs a convolutional featurizer with a last spatial feature map; "
        f"{type(featurizer).__name__} has none (vector inputs get an MLP). Use an image "
        f"dataset, or a featurizer that defines forward_maps(x) -> [B, K, h, w].")
