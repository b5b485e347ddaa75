"""Tests for domainbed.networks: shapes, the forward_maps/pool split, BN freezing, weights."""
import os

import pytest
import torch
import torch.nn as nn
import torchvision

from domainbed import networks

torch.set_num_threads(1)

R18 = {"resnet18": True, "pretrained": False, "resnet_dropout": 0.0}
MLP_HP = {"mlp_width": 16, "mlp_depth": 3, "mlp_dropout": 0.0}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME / hub dir for the test; the previous hub dir comes back after."""
    old = torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def _random_r18_file(path):
    """Save a random resnet18 state dict (with fc, like torchvision's file); return it."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


# --- shapes and the forward_maps / pool split ---------------------------------------------

@pytest.mark.parametrize(
    "input_shape, hparams, cls, n_out, map_shape",
    [
        ((1, 28, 28), {}, networks.MNIST_CNN, 128, (128, 14, 14)),
        ((2, 28, 28), {}, networks.MNIST_CNN, 128, (128, 14, 14)),
        ((3, 224, 224), R18, networks.ResNet, 512, (512, 7, 7)),
    ],
)
def test_featurizer_dispatch_shapes(input_shape, hparams, cls, n_out, map_shape):
    torch.manual_seed(0)
    f = networks.Featurizer(input_shape, hparams).eval()
    assert type(f) is cls
    assert isinstance(f.n_outputs, int) and f.n_outputs == n_out
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        A = f.forward_maps(x)
        z = f(x)
    assert A.shape == (2, *map_shape)
    assert z.shape == (2, n_out)
    assert torch.allclose(z, f.pool(A), atol=1e-6, rtol=0)
    assert torch.allclose(z, A.mean(dim=(2, 3)), atol=1e-5, rtol=0)


def test_mlp_by_shape_without_upstreams_dann_hparams():
    f = networks.Featurizer((5,), {})
    assert isinstance(f, networks.MLP) and f.n_outputs == networks.MLP_DEFAULTS["mlp_width"]
    with pytest.raises(networks.UserInputError, match="vectors"):
        networks.Featurizer((3, 28, 28), {"featurizer": "mlp"})


def test_no_featurizer_for_a_shape_is_a_user_error():
    """train.py reports it in one line (it is a UserInputError), not as a traceback."""
    with pytest.raises(networks.UserInputError):
        networks.Featurizer((3, 64, 64), {"featurizer": "auto"})


def test_featurizer_mlp():
    f = networks.Featurizer((5,), MLP_HP)
    assert isinstance(f, networks.MLP) and f.n_outputs == 16
    assert f(torch.randn(3, 5)).shape == (3, 16)


def test_resnet50_n_outputs():
    f = networks.ResNet((3, 32, 32), {"pretrained": False, "resnet_dropout": 0.0}).eval()
    assert f.n_outputs == 2048
    with torch.no_grad():
        assert f(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: networks.ResNet((3, 64, 64), {**R18, "resnet_dropout": 0.5}), (3, 64, 64)),
        (lambda: networks.MNIST_CNN((1, 28, 28)), (1, 28, 28)),
    ],
)
def test_forward_equals_pool_of_maps_in_train_mode(make, shape):
    """Structural check: with dropout active and the same seed, forward == pool(forward_maps)."""
    torch.manual_seed(0)
    f = make().train()
    x = torch.randn(4, *shape)
    # Maps are computed first in both paths, so the dropout draws line up when reseeded.
    torch.manual_seed(7)
    z = f(x)
    torch.manual_seed(7)
    z2 = f.pool(f.forward_maps(x))
    assert torch.equal(z, z2)


def test_dropout_is_applied_in_pool():
    f = networks.ResNet((3, 32, 32), {**R18, "resnet_dropout": 0.5}).train()
    A = torch.rand(8, 512, 2, 2) + 0.1
    z = f.pool(A)
    assert (z == 0).any(), "dropout 0.5 should zero some of 4096 features"
    f.eval()
    assert torch.allclose(f.pool(A), A.mean(dim=(2, 3)))


@pytest.mark.parametrize("shape", [(3, 20, 20), (3, 64, 64), (3, 256, 256), (2, 3, 64, 64)])
def test_unsupported_shape_names_the_way_out(shape):
    """Only upstream's shapes are matched: a 64x64 dataset gets no backbone by accident."""
    with pytest.raises(NotImplementedError) as info:
        networks.Featurizer(shape, {})
    message = str(info.value)
    assert str(shape) in message and "224" in message
    assert "FEATURIZER" in message and '"featurizer"' in message and "mnist_cnn" in message


# --- the featurizer registry ------------------------------------------------------------

def test_shape_rules_are_upstreams():
    assert networks.featurizer_for_shape((5,)) == "mlp"
    assert networks.featurizer_for_shape((1, 28, 28)) == "mnist_cnn"
    assert networks.featurizer_for_shape((3, 224, 224)) == "resnet"
    assert {"mlp", "mnist_cnn", "resnet"} <= set(networks.FEATURIZERS)


def test_featurizer_by_name_overrides_the_shape():
    """A ResNet on 64x64 images and an MNIST CNN on 32x32, named by the hparam."""
    f = networks.Featurizer((3, 64, 64), {**R18, "featurizer": "resnet"})
    assert type(f) is networks.ResNet and f.n_outputs == 512
    g = networks.Featurizer((3, 32, 32), {"featurizer": "mnist_cnn"})
    assert type(g) is networks.MNIST_CNN
    assert g.forward_maps(torch.randn(1, 3, 32, 32)).shape == (1, 128, 16, 16)
    h = networks.Featurizer((1, 28, 28), {"featurizer": "auto"})
    assert type(h) is networks.MNIST_CNN


def test_unknown_featurizer_names_the_closest():
    with pytest.raises(networks.UnknownNameError, match="Did you mean 'resnet'"):
        networks.Featurizer((3, 224, 224), {"featurizer": "resnt"})


@pytest.fixture
def restore_featurizers():
    saved = dict(networks.FEATURIZERS)
    yield
    networks.FEATURIZERS.clear()
    networks.FEATURIZERS.update(saved)


def test_register_featurizer(restore_featurizers):
    @networks.register_featurizer("tiny_test_net")
    class Tiny(networks.MapFeaturizer):
        n_outputs = 4

        def __init__(self, input_shape, hparams):
            super().__init__()
            self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = self.activation = networks.Identity()

        def forward_maps(self, x):
            return self.conv(x)

    f = networks.Featurizer((3, 10, 10), {"featurizer": "tiny_test_net"})
    assert type(f) is Tiny and f(torch.randn(2, 3, 10, 10)).shape == (2, 4)
    networks.register_featurizer("tiny_test_net")(Tiny)  # the same builder again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        networks.register_featurizer("tiny_test_net")(lambda shape, hparams: None)
    with pytest.raises(ValueError, match="reserved"):
        networks.register_featurizer("auto")


def test_dataset_names_its_featurizer(restore_datasets):
    """A dataset's FEATURIZER becomes the default of the `featurizer` hparam."""
    from domainbed import datasets, hparams_registry

    class Named64(datasets.Debug):
        INPUT_SHAPE = (3, 64, 64)
        ENVIRONMENTS = ["0", "1", "2"]
        FEATURIZER = "resnet"

    datasets.register_dataset("Named64", Named64)
    assert hparams_registry.default_hparams("ERM", "Named64")["featurizer"] == "resnet"
    assert hparams_registry.random_hparams("ERM", "Named64", 3)["featurizer"] == "resnet"
    assert hparams_registry.default_hparams("ERM", "Debug28")["featurizer"] == "auto"
    assert hparams_registry.default_hparams("ERM", "NotRegistered")["featurizer"] == "auto"


# --- ResNet: BatchNorm, channels, weights --------------------------------------------------

@pytest.mark.parametrize("freeze", [True, False])
def test_resnet_bn_frozen(freeze):
    torch.manual_seed(0)
    f = networks.ResNet((3, 32, 32), {**R18, "freeze_bn": freeze})
    f.train()
    bn = f.network.bn1
    assert bn.training is (not freeze)
    before = bn.running_mean.clone()
    f(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn.running_mean, before) is freeze
    assert bn.weight.requires_grad  # affine params stay trainable either way
    f.eval().train()  # every train() call re-freezes
    assert all(
        m.training is (not freeze) for m in f.modules() if isinstance(m, nn.BatchNorm2d)
    )
    assert f.training and f.network.layer1.training


def test_resnet_freeze_bn_is_default():
    f = networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained": False}).train()
    assert not f.network.bn1.training


@pytest.mark.parametrize("nc", [2, 4])
def test_resnet_channel_adaptation(tmp_path, nc):
    path = str(tmp_path / "r18.pth")
    state = _random_r18_file(path)
    f = networks.ResNet((nc, 32, 32), {"resnet18": True, "pretrained_path": path})
    w = f.network.conv1.weight
    assert w.shape == (64, nc, 7, 7) and f.network.conv1.bias is None
    for i in range(nc):
        assert torch.equal(w[:, i], state["conv1.weight"][:, i % 3])
    assert f(torch.randn(1, nc, 32, 32)).shape == (1, 512)


def test_resnet_pretrained_path_loads(tmp_path):
    path = str(tmp_path / "r18.pth")
    state = _random_r18_file(path)
    f = networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained_path": path})
    assert torch.equal(f.network.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(f.network.bn1.running_var, state["bn1.running_var"])
    assert isinstance(f.network.fc, networks.Identity)


def test_resnet_pretrained_path_missing_or_bad(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(networks.PretrainedWeightsMissing, match="nope.pth"):
        networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained_path": missing})
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained_path": str(bad)})


def test_resnet_missing_weights_message(torch_home):
    expected = os.path.join(str(torch_home), "hub", "checkpoints", "resnet50-0676ba61.pth")
    assert networks.pretrained_cache_path("resnet50") == expected
    with pytest.raises(networks.PretrainedWeightsMissing) as info:
        networks.Featurizer((3, 224, 224), {"resnet18": False})
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert expected in msg
    assert "pretrained_path" in msg
    assert '"pretrained": false' in msg
    assert "TORCH_HOME" in msg


def test_resnet_loads_from_cache(torch_home):
    cache = networks.pretrained_cache_path("resnet18")
    assert cache.startswith(str(torch_home)) and cache.endswith("resnet18-f37072fd.pth")
    state = _random_r18_file(cache)
    f = networks.ResNet((3, 32, 32), {"resnet18": True})
    assert torch.equal(f.network.conv1.weight, state["conv1.weight"])
    assert torch.equal(f.network.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_resnet_pretrained_false_is_random(torch_home):
    # No weights anywhere, yet pretrained=False must build (and never touch the cache).
    f = networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained": False})
    assert not os.path.exists(os.path.dirname(networks.pretrained_cache_path("resnet18")))
    assert f.n_outputs == 512


# The plugin's LiteCNN is tested in test_backbones.py.

# --- MLP and Classifier -------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 4])
def test_mlp(depth):
    m = networks.MLP(7, 3, {"mlp_width": 12, "mlp_depth": depth, "mlp_dropout": 0.1})
    assert m.n_outputs == 3 and len(m.hiddens) == depth - 2
    assert m(torch.randn(5, 7)).shape == (5, 3)


def test_classifier():
    lin = networks.Classifier(64, 4)
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (4, 64)
    mlp = networks.Classifier(64, 4, is_nonlinear=True)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(32, 64), (16, 32), (4, 16)]
    assert mlp(torch.randn(3, 64)).shape == (3, 4)


def test_resnet_without_head_gives_torchvisions_pooled_features():
    """The removed head (upstream's `Identity`) leaves exactly torchvision's penultimate
    features: the same weights give the same 512-vector as torchvision's own forward."""
    torch.manual_seed(0)
    f = networks.ResNet((3, 64, 64), R18).eval()
    reference = torchvision.models.resnet18(weights=None).eval()
    reference.load_state_dict(f.network.state_dict(), strict=False)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(f(x), reference(x), atol=1e-6)
    assert isinstance(f.network.fc, networks.Identity)
