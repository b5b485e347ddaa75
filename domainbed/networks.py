"""Featurizers and classifiers, compatible with DomainBed's `networks` module.

Every convolutional featurizer here splits its forward pass in two so that Grad-CAM
needs no hooks:

    A = featurizer.forward_maps(x)   # last spatial feature map [B, K, h, w]
    z = featurizer.pool(A)           # GAP + flatten + dropout + activation -> [B, K]
    featurizer(x) == featurizer.pool(featurizer.forward_maps(x))

Featurizers are found by name in `FEATURIZERS` (`register_featurizer`, in the style of
timm's registry): the `featurizer` hparam names one, and a dataset sets its default with the
class attribute `FEATURIZER`. With "auto" upstream's shape rules pick it (28x28 -> MNIST_CNN,
224x224 -> ResNet, vectors -> MLP), so datasets written for upstream keep their backbones.

ImageNet weights are never downloaded: they come from the local torch hub cache or
from a file given with the `pretrained_path` hparam.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from domainbed.lib.misc import UnknownNameError, UserInputError, unknown_name_message
from domainbed.plugins import ensure_loaded

Shape = Sequence[int]
FeaturizerBuilder = Callable[[Shape, Mapping[str, Any]], nn.Module]

AUTO = "auto"  # the `featurizer` hparam's value that means "upstream's shape rules"
FEATURIZERS: dict[str, FeaturizerBuilder] = {}


def register_featurizer(name: str) -> Callable[[FeaturizerBuilder], FeaturizerBuilder]:
    """Decorator: make `builder(input_shape, hparams)` (a class or a function) buildable as
    `name`. Registering the same builder again is a no-op; another one under a taken name
    is an error, so two plugins cannot silently replace each other's backbone."""
    if name == AUTO:
        raise ValueError(f"'{AUTO}' is reserved for upstream's shape rules")

    def add(builder: FeaturizerBuilder) -> FeaturizerBuilder:
        known = FEATURIZERS.get(name)
        if known is not None and known is not builder:
            raise ValueError(f"featurizer '{name}' is already registered ({known!r})")
        FEATURIZERS[name] = builder
        return builder
    return add


class NoFeaturizerForShape(UserInputError, NotImplementedError):
    """No backbone is named and upstream's shape rules cover none for this input shape."""


def get_featurizer_class(name: str) -> FeaturizerBuilder:
    """The builder registered as `name`; an unknown name is one message with the closest."""
    ensure_loaded()
    if name not in FEATURIZERS:
        raise UnknownNameError(unknown_name_message("Featurizer", name, sorted(FEATURIZERS)))
    return FEATURIZERS[name]


class Identity(nn.Identity):
    """A layer that returns its input (stands in for a removed head); upstream's name."""


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights are needed but are neither in the torch cache nor at the given path."""


# ---------------------------------------------------------------------------------------
# Shared pieces of the conv featurizers


class MapFeaturizer(nn.Module):
    """Base for conv featurizers: forward is defined as pool(forward_maps(x)), always."""

    n_outputs: int

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def map_layer(self) -> nn.Module:
        """The submodule whose output is forward_maps' result (where Grad-CAM libraries
        put their hooks; the reference implementation in ex2l_domainbed.gradcam uses it)."""
        raise NotImplementedError

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Global average pooling, flatten, dropout, activation: exactly forward's tail."""
        z = self.avgpool(maps).flatten(1)
        return self.activation(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_maps(x))


def load_state_dict_file(path: str, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict from disk (tensors only), naming the file in every error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{what}: could not read {path} as a torch state dict: {exc}") from exc
    # Accept the common wrappers {'state_dict': ...} / {'model': ...} around the weights.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise RuntimeError(f"{what}: {path} does not hold a state dict of tensors")
    # Weights saved from nn.DataParallel carry a 'module.' prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------
# MNIST


@register_featurizer("mnist_cnn")
class MNIST_CNN(MapFeaturizer):
    """Upstream's small CNN for 28x28 inputs; GroupNorm comes after each ReLU."""

    n_outputs = 128

    def __init__(self, input_shape: Shape, hparams: Mapping[str, Any] | None = None):
        super().__init__()  # no hparams (as upstream); accepted so the registry can build it
        c_in = input_shape[0]
        self.conv1 = nn.Conv2d(c_in, 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = Identity()  # upstream has no dropout here
        self.activation = Identity()

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(torch.relu(self.conv1(x)))
        x = self.bn1(torch.relu(self.conv2(x)))
        x = self.bn2(torch.relu(self.conv3(x)))
        return self.bn3(torch.relu(self.conv4(x)))

    def map_layer(self) -> nn.Module:
        return self.bn3


# ---------------------------------------------------------------------------------------
# ResNet


def _torchvision_weights(arch: str):
    # torchvision is imported only when a ResNet is built: it costs ~1.5 s per process.
    import torchvision
    return {
        "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    }[arch]


def pretrained_cache_path(arch: str) -> str:
    """Where torchvision keeps the ImageNet weights of `arch` in the local torch hub cache."""
    filename = os.path.basename(_torchvision_weights(arch).url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _imagenet_state_dict(arch: str, hparams: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ImageNet weights from `pretrained_path` or the torch cache; never from the network."""
    path = hparams.get("pretrained_path", "") or ""
    if path:
        if not os.path.isfile(path):
            raise PretrainedWeightsMissing(
                f"pretrained_path={path!r} does not exist. Point it to a {arch} state dict "
                f"file, or train from scratch with --hparams '{{\"pretrained\": false}}'."
            )
        return load_state_dict_file(path, f"{arch} ImageNet weights (pretrained_path)")
    cached = pretrained_cache_path(arch)
    if not os.path.isfile(cached):
        url = _torchvision_weights(arch).url
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {arch} not found at {cached} (no download is attempted). "
            f"Either copy torchvision's file ({url}) to that path (or set TORCH_HOME to a "
            f"directory whose hub/checkpoints/ holds it), or pass "
            f"--hparams '{{\"pretrained_path\": \"/path/to/{arch}.pth\"}}', "
            f"or train from scratch with --hparams '{{\"pretrained\": false}}'."
        )
    return load_state_dict_file(cached, f"{arch} ImageNet weights (torch cache)")


@register_featurizer("resnet")
class ResNet(MapFeaturizer):
    """torchvision ResNet-18/50 with the head removed and (by default) BatchNorm frozen."""

    def __init__(self, input_shape: Shape, hparams: Mapping[str, Any]):
        super().__init__()
        arch = "resnet18" if hparams.get("resnet18", False) else "resnet50"
        import torchvision
        self.network = getattr(torchvision.models, arch)(weights=None)
        self.n_outputs = 512 if arch == "resnet18" else 2048
        if hparams.get("pretrained", True):
            state = _imagenet_state_dict(arch, hparams)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, _ = self.network.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing:
                raise RuntimeError(
                    f"{arch} ImageNet weights lack {len(missing)} keys, e.g. {missing[:4]}"
                )

        # Inputs with other than 3 channels: input channel i reuses weights of channel i % 3.
        nc = input_shape[0]
        if nc != 3:
            old = self.network.conv1.weight.data.clone()
            self.network.conv1 = nn.Conv2d(nc, 64, kernel_size=7, stride=2, padding=3, bias=False)
            with torch.no_grad():
                for i in range(nc):
                    self.network.conv1.weight[:, i] = old[:, i % 3]

        self.network.fc = Identity()
        self.avgpool = self.network.avgpool
        self.dropout = nn.Dropout(hparams.get("resnet_dropout", 0.0))
        self.activation = Identity()
        self.bn_frozen = bool(hparams.get("freeze_bn", True))
        self.train(self.training)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        n = self.network
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def map_layer(self) -> nn.Module:
        return self.network.layer4

    def train(self, mode: bool = True) -> "ResNet":
        """Switch mode, then keep BatchNorm running statistics frozen if asked."""
        super().train(mode)
        if self.bn_frozen:
            self.freeze_bn()
        return self

    def freeze_bn(self) -> None:
        """Put every BatchNorm2d in eval mode; affine parameters remain trainable."""
        for m in self.network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


# ---------------------------------------------------------------------------------------
# MLP, classifier, factory


class MLP(nn.Module):
    """A plain MLP (for vector inputs); dropout precedes each ReLU, as upstream."""

    def __init__(self, n_inputs: int, n_outputs: int, hparams: Mapping[str, Any]):
        super().__init__()
        width = hparams["mlp_width"]
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(hparams["mlp_dropout"])
        self.hiddens = nn.ModuleList(
            [nn.Linear(width, width) for _ in range(hparams["mlp_depth"] - 2)]
        )
        self.output = nn.Linear(width, n_outputs)
        self.n_outputs = n_outputs
        self.activation = Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = torch.relu(self.dropout(hidden(x)))
        return self.activation(self.output(x))


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:
    """The head on top of a featurizer: linear, or a 3-layer MLP that halves the width twice."""
    if is_nonlinear:
        return nn.Sequential(
            nn.Linear(in_features, in_features // 2),
            nn.ReLU(),
            nn.Linear(in_features // 2, in_features // 4),
            nn.ReLU(),
            nn.Linear(in_features // 4, out_features),
        )
    return nn.Linear(in_features, out_features)


# Upstream defines the MLP's hparams only for DANN and CDANN; elsewhere these are its defaults.
MLP_DEFAULTS = {"mlp_width": 256, "mlp_depth": 3, "mlp_dropout": 0.0}


@register_featurizer("mlp")
def _mlp_featurizer(input_shape: Shape, hparams: Mapping[str, Any]) -> nn.Module:
    if len(input_shape) != 1:
        raise NoFeaturizerForShape(f"featurizer mlp takes vectors (D,), not {tuple(input_shape)}.")
    hparams = {**MLP_DEFAULTS, **hparams}
    return MLP(input_shape[0], hparams["mlp_width"], hparams)


def featurizer_for_shape(input_shape: Shape) -> str:
    """Upstream's shape rules: the featurizer name for `input_shape` (C, H, W) or (D,)."""
    shape = tuple(input_shape)
    if len(shape) == 1:
        return "mlp"
    if len(shape) == 3 and shape[1:3] == (28, 28):
        return "mnist_cnn"
    if len(shape) == 3 and shape[1:3] == (224, 224):
        return "resnet"
    ensure_loaded()  # so the message lists the plugins' backbones too
    raise NoFeaturizerForShape(
        f"No featurizer for input shape {shape} by upstream's shape rules ((D,) -> mlp, "
        f"(C, 28, 28) -> mnist_cnn, (C, 224, 224) -> resnet). Name one: set the dataset's "
        f"FEATURIZER, or pass --hparams '{{\"featurizer\": \"NAME\"}}' with NAME one of "
        f"{', '.join(sorted(FEATURIZERS))}.")


def Featurizer(input_shape: Shape, hparams: Mapping[str, Any]) -> nn.Module:
    """Build the featurizer `hparams["featurizer"]` names; "auto" (or absent) picks it by
    upstream's shape rules."""
    name = hparams.get("featurizer", AUTO) or AUTO
    if name == AUTO:
        name = featurizer_for_shape(input_shape)
    return get_featurizer_class(name)(tuple(input_shape), hparams)
