"""The plugin's backbones (ex2l_domainbed.backbones): the Lite CNN, its registration by
name, freezing and loading of its pretrained weights."""
import pytest
import torch
import torch.nn as nn

from domainbed import networks
from ex2l_domainbed.backbones import LITE_CNN, LiteCNN
from ex2l_domainbed.plugin import register

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "input_shape, map_shape",
    [((3, 64, 64), (64, 8, 8)), ((3, 32, 32), (64, 4, 4)), ((3, 128, 96), (64, 16, 12))],
)
def test_lite_cnn_by_name(input_shape, map_shape):
    register()
    torch.manual_seed(0)
    f = networks.Featurizer(input_shape, {"featurizer": LITE_CNN}).eval()
    assert type(f) is LiteCNN and f.n_outputs == 64
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        A = f.forward_maps(x)
        z = f(x)
    assert A.shape == (2, *map_shape) and z.shape == (2, 64)
    assert torch.allclose(z, f.pool(A), atol=1e-6, rtol=0)
    assert torch.allclose(z, A.mean(dim=(2, 3)), atol=1e-5, rtol=0)


def test_lite_cnn_is_not_picked_by_shape():
    """Without the name, a 64x64 input gets no backbone (upstream's shape rules only)."""
    register()
    with pytest.raises(NotImplementedError, match="lite_cnn"):
        networks.Featurizer((3, 64, 64), {})


def test_forward_equals_pool_of_maps_in_train_mode():
    torch.manual_seed(0)
    f = LiteCNN((3, 64, 64), {"resnet_dropout": 0.5}).train()
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(7)
    z = f(x)
    torch.manual_seed(7)
    assert torch.equal(z, f.pool(f.forward_maps(x)))


def test_dropout_is_applied_in_pool():
    f = LiteCNN((3, 64, 64), {"resnet_dropout": 0.5}).train()
    A = torch.rand(8, 64, 8, 8) + 0.1
    assert (f.pool(A) == 0).any(), "dropout 0.5 should zero some of 512 features"
    f.eval()
    assert torch.allclose(f.pool(A), A.mean(dim=(2, 3)))


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_lite_freeze_blocks(k):
    torch.manual_seed(0)
    f = LiteCNN((3, 64, 64), {"lite_freeze_blocks": k})
    assert isinstance(f.blocks, nn.ModuleList) and len(f.blocks) == 4
    for i, block in enumerate(f.blocks):
        assert all(p.requires_grad is (i >= k) for p in block.parameters())
    # Frozen blocks keep their BN statistics in train mode; the others update them.
    f.train()
    before = [b[1].running_mean.clone() for b in f.blocks]
    f(torch.randn(4, 3, 64, 64))
    for i, block in enumerate(f.blocks):
        assert torch.equal(block[1].running_mean, before[i]) is (i < k)
    f.freeze_blocks(0)
    assert all(p.requires_grad for p in f.parameters())
    with pytest.raises(ValueError):
        f.freeze_blocks(5)


def test_lite_load_backbone(tmp_path):
    torch.manual_seed(1)
    src = LiteCNN((3, 64, 64), {})
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    # A pretraining checkpoint: backbone under a prefix plus a head that must be ignored.
    ckpt = {f"featurizer.{k}": v for k, v in src.state_dict().items()}
    ckpt["classifier.weight"] = torch.randn(12, 64)
    path = str(tmp_path / "lite.pth")
    torch.save(ckpt, path)
    torch.manual_seed(2)
    dst = LiteCNN((3, 64, 64), {})
    dst.load_backbone(path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(src.eval()(x), dst.eval()(x))


def test_lite_load_backbone_errors(tmp_path):
    f = LiteCNN((3, 64, 64), {})
    state = f.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="partial.pth.*blocks.3"):
        f.load_backbone(str(tmp_path / "partial.pth"))
    wrong = dict(state)
    wrong["blocks.0.0.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError, match="wrong.pth.*shape"):
        f.load_backbone(str(tmp_path / "wrong.pth"))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        f.load_backbone(str(tmp_path / "absent.pth"))
