"""`ex2l_penalty_path`: which Grad-CAM map carries the overlap penalty into the features.

The path ablation cuts one path at a time: "label" holds the confounder map constant inside
the overlap, "confounder" the label map. Checked against the two maps' own gradients: the
penalty's gradient at the feature map is the sum of what flows through each map.
"""
import pytest
import torch

from domainbed import datasets, hparams_registry
from domainbed.plugins import load_plugins
from ex2l_domainbed.algorithm import EX2L, EX2LHparamError

torch.set_num_threads(1)
load_plugins()

FEATURES_ONLY = {"ex2l_detach_label": True, "ex2l_detach_confounder": True}


def _penalty_grad(path: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(d overlap / d feature map, overlap) for one batch of DebugAttr28, same seed."""
    hp = hparams_registry.default_hparams("EX2L_Literal", "DebugAttr28")
    hp.update(FEATURES_ONLY, ex2l_penalty_path=path, ex2l_target=target, ex2l_gradcam="autograd")
    torch.manual_seed(0)
    data = datasets.get_dataset_class("DebugAttr28")("", [], hp)
    alg = EX2L(data.input_shape, 2, 3, hp, num_attributes=2).eval()
    x, y, a = (torch.stack([data[1][i][j] for i in range(8)]) for j in range(3))
    seen = {}  # the feature map, as Grad-CAM libraries catch it: a hook on the last stage
    alg.featurizer.map_layer().register_forward_hook(
        lambda module, inputs, output: seen.setdefault("A", output))
    *_, overlap = alg._explain(x, y, a)
    (grad,) = torch.autograd.grad(overlap.sum(), seen["A"])
    return grad, overlap.detach()


@pytest.mark.parametrize("target", ["true", "all"])
def test_paths_split_the_full_gradient(target):
    both, o_both = _penalty_grad("both", target)
    via_label, o_label = _penalty_grad("label", target)
    via_confounder, o_conf = _penalty_grad("confounder", target)
    assert torch.equal(o_both, o_label) and torch.equal(o_both, o_conf)  # same value
    assert torch.allclose(via_label + via_confounder, both, atol=1e-6)
    assert not torch.allclose(via_label, both, atol=1e-6)
    assert not torch.allclose(via_confounder, both, atol=1e-6)


def test_unknown_path_is_refused():
    hp = hparams_registry.default_hparams("EX2L", "Debug28")
    hp["ex2l_penalty_path"] = "labels"
    with pytest.raises(EX2LHparamError, match="ex2l_penalty_path='labels' is not one of both"):
        EX2L((3, 28, 28), 2, 3, hp)
