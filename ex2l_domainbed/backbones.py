"""The plugin's own backbones, registered into the harness's featurizer registry by name.

`lite_cnn` is the small CNN behind Spawrious-Lite: low-resolution images cannot use an
ImageNet ResNet, so Lite ships pretrained weights of its own for this network. The Lite
datasets name it with `FEATURIZER = "lite_cnn"`; `register()` (see `plugin`) adds it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from domainbed.networks import Identity, MapFeaturizer, load_state_dict_file

Shape = Sequence[int]
LITE_CNN = "lite_cnn"


class LiteCNN(MapFeaturizer):
    """Small CNN for low-resolution colour images (Spawrious-Lite, 64x64 -> 8x8x64 map).

    Four blocks of 3x3 conv + BatchNorm + ReLU (widths 16/32/64/64); the first conv has
    stride 2 and blocks 2 and 3 end in a 2x2 max-pool. Blocks live in `self.blocks` so a
    pretrained backbone can be partly frozen (hparam `lite_freeze_blocks`). With hparams
    `pretrained` true and `pretrained_path` set, the conv/BN weights are loaded from that
    file (Spawrious-Lite ships them: `ex2l_domainbed.datasets.lite_backbone`).
    """

    n_outputs = 64
    WIDTHS = (16, 32, 64, 64)

    def __init__(self, input_shape: Shape, hparams: Mapping[str, Any]):
        super().__init__()
        blocks = []
        c_in = input_shape[0]
        for i, width in enumerate(self.WIDTHS):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 2):
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(hparams.get("resnet_dropout", 0.0))
        self.activation = Identity()
        self.n_frozen = 0
        # Pretrained weights of its own (Spawrious-Lite ships them, as ImageNet is for ResNet).
        if hparams.get("pretrained", False) and hparams.get("pretrained_path", ""):
            self.load_backbone(hparams["pretrained_path"])
        self.freeze_blocks(int(hparams.get("lite_freeze_blocks", 0)))

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def map_layer(self) -> nn.Module:
        return self.blocks[-1]

    def freeze_blocks(self, k: int) -> None:
        """Freeze the first k blocks (and unfreeze the rest).

        Frozen blocks get requires_grad=False and their BatchNorm layers stay in eval
        mode (see `train`), so a frozen block computes a fixed function.
        """
        if not 0 <= k <= len(self.blocks):
            raise ValueError(f"lite_freeze_blocks must be in 0..{len(self.blocks)}, got {k}")
        self.n_frozen = k
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= k)
        self.train(self.training)

    def train(self, mode: bool = True) -> "LiteCNN":
        super().train(mode)
        for block in self.blocks[: self.n_frozen]:
            block.eval()
        return self

    def load_backbone(self, path: str) -> None:
        """Load pretrained conv/BN weights (keys as in this module's state dict).

        Keys of other modules (e.g. a pretraining head) are ignored; every conv/BN key of
        this backbone must be present with the right shape. An optional prefix common to
        all keys (such as 'featurizer.' or 'network.0.') is stripped.
        """
        what = "LiteCNN backbone weights"
        loaded = load_state_dict_file(path, what)
        own = self.state_dict()
        required = [k for k in own if not k.endswith("num_batches_tracked")]
        prefix = _find_prefix(loaded, required)
        if prefix is None:
            missing = [k for k in required if k not in loaded]
            raise RuntimeError(
                f"{what}: {path} lacks {len(missing)} conv/BN keys, e.g. {missing[:4]} "
                f"(expected keys like {required[:2]})"
            )
        new_state = {}
        for k in own:
            src = prefix + k
            if src not in loaded:  # only num_batches_tracked may be absent
                continue
            if loaded[src].shape != own[k].shape:
                raise RuntimeError(
                    f"{what}: {path}: '{src}' has shape {tuple(loaded[src].shape)}, "
                    f"expected {tuple(own[k].shape)}"
                )
            new_state[k] = loaded[src]
        self.load_state_dict(new_state, strict=False)


def _find_prefix(loaded: Mapping[str, Any], required: Sequence[str]) -> str | None:
    """The prefix p such that every required key k is present as p + k, or None."""
    candidates = {""}
    first = required[0]
    candidates |= {k[: -len(first)] for k in loaded if k.endswith("." + first)}
    for p in sorted(candidates, key=len):
        if all(p + k in loaded for k in required):
            return p
    return None


BACKBONES = {LITE_CNN: LiteCNN}  # name -> builder, registered by `plugin.register()`
