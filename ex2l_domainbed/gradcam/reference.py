"""Grad-CAM the way Grad-CAM libraries compute it: a forward hook and a full backward.

This is the reference the fast backends are measured against (benchmarks time it as the
"library" baseline; tests compare maps with it). A forward hook on the featurizer's last
stage (`featurizer.map_layer()`) keeps the feature map A and a tensor hook on A keeps
dScore/dA; for each head, `score.backward(create_graph=True, retain_graph=True)` runs
through the whole network, as pytorch-grad-cam does with score = the summed logit of each
sample's target class. Channel weights are the spatial mean of those gradients, and each
map is relu(sum_k w_k A_k). Differentiable (create_graph), but every head costs a full
backward pass, and the parameters' .grad fields are left filled: clear them before a step.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn as nn


class LibraryCAM(NamedTuple):
    features: torch.Tensor       # A [B, K, h, w], as the hook saw it
    logits: list[torch.Tensor]   # each head's logits [B, C_m]
    maps: torch.Tensor           # [B, M, h, w], one map per head


def library_gradcam(featurizer: nn.Module, heads: Sequence[nn.Module],
                    targets: Sequence[torch.Tensor], x: torch.Tensor) -> LibraryCAM:
    """Maps of `heads[m]` for classes `targets[m]` on `featurizer(x)`, the library way."""
    captured: dict[str, torch.Tensor] = {}
    grads: list[torch.Tensor] = []

    def keep_map(module, inputs, output):
        captured["A"] = output
        output.register_hook(grads.append)

    handle = featurizer.map_layer().register_forward_hook(keep_map)
    try:
        z = featurizer(x)
    finally:
        handle.remove()
    logits = [head(z) for head in heads]
    for out, target in zip(logits, targets):
        score = out.gather(1, target[:, None]).sum()
        score.backward(create_graph=True, retain_graph=True)  # full backward per head
    A = captured["A"]
    weights = torch.stack([g.mean((2, 3)) for g in grads], 1)  # [B, M, K]
    maps = torch.relu(torch.einsum("bmk,bkhw->bmhw", weights, A))
    return LibraryCAM(A, logits, maps)
