"""The library-style Grad-CAM (hooks + a full backward) agrees with the module's backends."""
import pytest
import torch

from domainbed import networks
from ex2l_domainbed.backbones import LiteCNN
from ex2l_domainbed.feature_maps import split_featurizer
from ex2l_domainbed.gradcam import gradcam
from ex2l_domainbed.gradcam.reference import library_gradcam

torch.set_num_threads(1)


@pytest.mark.parametrize("make, shape", [
    (lambda: networks.MNIST_CNN((3, 28, 28)), (3, 28, 28)),
    (lambda: LiteCNN((3, 32, 32), {}), (3, 32, 32)),
    (lambda: networks.ResNet((3, 32, 32), {"resnet18": True, "pretrained": False}), (3, 32, 32)),
])
def test_library_maps_equal_the_autograd_backend(make, shape):
    torch.manual_seed(0)
    featurizer = make().double().eval()
    heads = [torch.nn.Linear(featurizer.n_outputs, k).double() for k in (4, 3)]
    x = torch.randn(5, *shape, dtype=torch.double)
    y, a = torch.randint(0, 4, (5,)), torch.randint(0, 3, (5,))
    ref = library_gradcam(featurizer, heads, [y, a], x)
    assert ref.maps.shape == (5, 2, *ref.features.shape[2:]) and ref.maps.requires_grad
    assert torch.equal(ref.features, featurizer.forward_maps(x))
    neck = split_featurizer(featurizer)[1]
    ours = gradcam(ref.features, heads, [y, a], neck=neck, backend="autograd", score="logit")
    assert (ref.maps > 0).any()
    assert torch.allclose(ref.maps, ours.maps, atol=1e-12)
    for head in heads:  # the library way leaves gradients behind: visible, not hidden
        assert head.weight.grad is not None
