"""Grad-CAM module: the closed form equals exact double-backprop Grad-CAM (the autograd
oracle) in maps, overlap and every gradient; `auto` never picks an inexact backend;
overlap measures have bounded gradients at (near-)zero maps; captum agrees."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ex2l_domainbed.gradcam import gradcam
from ex2l_domainbed.gradcam import overlap as overlap_lib
from ex2l_domainbed.gradcam.api import closed_form_problem

torch.set_num_threads(1)


def make_heads(kind, k, dtype, bias=True):
    if kind == "linear":
        return nn.Linear(k, 4, bias=bias).to(dtype), nn.Linear(k, 3, bias=bias).to(dtype)
    act = {"mlp_relu": nn.ReLU, "mlp_gelu": nn.GELU, "mlp_tanh": nn.Tanh}[kind]
    return (nn.Sequential(nn.Linear(k, 9), act(), nn.Linear(9, 4)).to(dtype),
            nn.Sequential(nn.Linear(k, 9), act(), nn.Linear(9, 7), act(), nn.Linear(7, 3)).to(dtype))


def setup(kind="linear", dtype=torch.float64, shape=(5, 3, 7, 5), k=6, bias=True, seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(shape[1], k, 3, padding=1), nn.ReLU()).to(dtype)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    heads = make_heads(kind, k, dtype, bias)
    y = torch.arange(shape[0]) % 4
    a = (torch.arange(shape[0]) * 2 + 1) % 3
    return backbone, heads, x, y, a


def loss_and_grads(backbone, heads, x, y, a, **kwargs):
    """A training-like loss built from the maps, and its gradient w.r.t. everything."""
    cam = gradcam(backbone(x), heads, [y, a], **kwargs)
    loss = (F.cross_entropy(cam.logits[0], y) + cam.maps.square().mean()
            + (cam.overlap.mean() if cam.overlap is not None else 0))
    params = [x, *backbone.parameters(), *heads[0].parameters(), *heads[1].parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return cam, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def assert_same(cam1, grads1, cam2, grads2, atol):
    torch.testing.assert_close(cam1.maps, cam2.maps, rtol=0, atol=atol)
    if cam1.overlap is not None:
        torch.testing.assert_close(cam1.overlap, cam2.overlap, rtol=0, atol=atol)
    scale = max(float(g.abs().max()) for g in grads2)
    assert scale > 0
    for g1, g2 in zip(grads1, grads2):
        torch.testing.assert_close(g1, g2, rtol=0, atol=atol * max(1.0, scale))


# ------------------------------------------------------------------ closed form == oracle

@pytest.mark.parametrize("kind", ["linear", "mlp_relu", "mlp_gelu", "mlp_tanh"])
@pytest.mark.parametrize("score", ["log_softmax", "logit"])
@pytest.mark.parametrize("measure", ["cosine", "pearson", "soft_iou"])
def test_closed_form_matches_autograd_float64(kind, score, measure):
    backbone, heads, x, y, a = setup(kind)
    kw = dict(score=score, measure=measure)
    cam_c, g_c = loss_and_grads(backbone, heads, x, y, a, backend="closed_form", **kw)
    cam_a, g_a = loss_and_grads(backbone, heads, x, y, a, backend="autograd", **kw)
    assert (cam_c.backend, cam_a.backend) == ("closed_form", "autograd")
    assert cam_c.maps.shape == (5, 2, 7, 5) and cam_c.maps.min() >= 0
    assert (cam_c.maps > 0).any()
    assert_same(cam_c, g_c, cam_a, g_a, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp_gelu"])
@pytest.mark.parametrize("measure", ["cosine", "pearson", "soft_iou"])
@pytest.mark.parametrize("shape", [(5, 3, 7, 7), (2, 3, 5, 3)])
def test_fused_kernel_matches_autograd_through_the_api(kind, measure, shape):
    """The Triton kernel (CPU interpreter here) inside the full chain: heads, weights, maps,
    overlap and every parameter gradient equal the double-backprop oracle."""
    pytest.importorskip("triton")
    backbone, heads, x, y, a = setup(kind, shape=shape)
    cam_f, g_f = loss_and_grads(backbone, heads, x, y, a, backend="fused", measure=measure)
    cam_a, g_a = loss_and_grads(backbone, heads, x, y, a, backend="autograd", measure=measure)
    assert cam_f.backend == "fused"
    assert_same(cam_f, g_f, cam_a, g_a, atol=1e-10)


@pytest.mark.parametrize("shape", [(3, 3, 7, 7), (4, 3, 5, 3), (2, 3, 1, 1), (1, 3, 3, 4)])
@pytest.mark.parametrize("kind", ["linear", "mlp_gelu"])
def test_closed_form_matches_autograd_odd_sizes_and_no_bias(shape, kind):
    backbone, heads, x, y, a = setup(kind, shape=shape, bias=False)
    cam_c, g_c = loss_and_grads(backbone, heads, x, y, a, backend="closed_form", measure="cosine")
    cam_a, g_a = loss_and_grads(backbone, heads, x, y, a, backend="autograd", measure="cosine")
    assert_same(cam_c, g_c, cam_a, g_a, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp_relu"])
def test_closed_form_matches_autograd_float32(kind):
    backbone, heads, x, y, a = setup(kind, dtype=torch.float32)
    cam_c, g_c = loss_and_grads(backbone, heads, x, y, a, backend="closed_form", measure="cosine")
    cam_a, g_a = loss_and_grads(backbone, heads, x, y, a, backend="autograd", measure="cosine")
    assert_same(cam_c, g_c, cam_a, g_a, atol=2e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp_relu"])
def test_dropout_neck_uses_the_same_mask_as_the_logits(kind):
    """With active dropout the closed form takes the VJP of the very forward that made the
    logits, so it still equals the oracle (both seeded to draw the same mask)."""
    backbone, heads, x, y, a = setup(kind)
    neck = nn.Dropout(0.5).train()
    results = []
    for backend in ("closed_form", "autograd"):
        torch.manual_seed(123)
        results.append(loss_and_grads(backbone, heads, x, y, a, backend=backend, neck=neck,
                                      measure="cosine"))
    (cam_c, g_c), (cam_a, g_a) = results
    assert_same(cam_c, g_c, cam_a, g_a, atol=1e-12)
    # the mask matters: without dropout the maps differ
    cam_plain = gradcam(backbone(x), heads, [y, a], backend="closed_form")
    assert not torch.allclose(cam_plain.maps, cam_c.maps)


def test_linear_closed_form_is_the_softmax_centred_rows_of_the_weight():
    backbone, (head, other), x, y, a = setup("linear")
    feats = backbone(x)
    cam = gradcam(feats, [head, other], [y, a], backend="closed_form")
    p = torch.softmax(head(feats.mean((2, 3))), 1)
    expected = (head.weight[y] - p @ head.weight) / (7 * 5)
    torch.testing.assert_close(cam.weights[:, 0], expected, rtol=0, atol=1e-14)
    maps = torch.relu(torch.einsum("bk,bkhw->bhw", expected, feats))
    torch.testing.assert_close(cam.maps[:, 0], maps, rtol=0, atol=1e-14)


# ------------------------------------------------------------------ the score's shortcut

def test_log_softmax_maps_ignore_a_common_shift_of_the_head_rows():
    """Adding one vector to every row of a linear head leaves the softmax, and therefore
    the default maps, unchanged; with raw logits the same shift can zero every map."""
    backbone, (head, other), x, y, a = setup("linear")
    feats = backbone(x).detach()
    shifted = nn.Linear(head.in_features, head.out_features).double()
    with torch.no_grad():
        shifted.weight.copy_(head.weight - 5.0)  # a large common negative vector
        shifted.bias.copy_(head.bias)
    for backend in ("closed_form", "autograd"):
        base = gradcam(feats, [head, other], [y, a], backend=backend)
        moved = gradcam(feats, [shifted, other], [y, a], backend=backend)
        torch.testing.assert_close(moved.maps, base.maps, rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.softmax(moved.logits[0], 1),
                                   torch.softmax(base.logits[0], 1), rtol=0, atol=1e-12)
    logit_base = gradcam(feats, [head, other], [y, a], score="logit")
    logit_moved = gradcam(feats, [shifted, other], [y, a], score="logit")
    assert logit_base.maps[:, 0].sum() > 0
    assert logit_moved.maps[:, 0].sum() == 0  # the escape the default closes


# ------------------------------------------------------------------ auto never silently wrong

def per_sample_oracle(feats, head, y):
    """d score_b / d A_b for each sample b, from the full Jacobian (independent code path)."""
    def scores(f):
        return F.log_softmax(head(f.mean((2, 3))), 1).gather(1, y[:, None])[:, 0]
    jac = torch.autograd.functional.jacobian(scores, feats)  # [B, B, K, h, w]
    b = torch.arange(feats.shape[0])
    alpha = jac[b, b].mean((2, 3))
    return torch.relu(torch.einsum("bk,bkhw->bhw", alpha, feats))


def test_batchnorm_head_in_train_mode_takes_the_exact_per_sample_autograd_path():
    torch.manual_seed(0)
    feats = torch.randn(6, 5, 4, 3, dtype=torch.float64).relu()
    y, a = torch.arange(6) % 3, torch.arange(6) % 2
    bn_head = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    other = nn.Linear(5, 2).double()
    assert closed_form_problem([bn_head, other], None, None) is not None
    cam = gradcam(feats, [bn_head, other], [y, a])
    assert cam.backend == "autograd"
    bn_head.train()
    torch.testing.assert_close(cam.maps[:, 0], per_sample_oracle(feats, bn_head, y),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not exact.*BatchNorm"):
        gradcam(feats, [bn_head, other], [y, a], backend="closed_form")
    bn_head.eval()  # running statistics: per-sample again, so the closed form is allowed
    cam_eval = gradcam(feats, [bn_head, other], [y, a])
    assert cam_eval.backend == "closed_form"
    oracle = gradcam(feats, [bn_head, other], [y, a], backend="autograd")
    torch.testing.assert_close(cam_eval.maps, oracle.maps, rtol=0, atol=1e-12)


def test_summed_score_would_differ_for_a_batchnorm_head():
    """Negative control: the shortcut every library uses mixes samples under batch stats."""
    torch.manual_seed(0)
    feats = torch.randn(6, 5, 4, 3, dtype=torch.float64).relu()
    y = torch.arange(6) % 3
    head = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double().train()
    f = feats.clone().requires_grad_()
    s = F.log_softmax(head(f.mean((2, 3))), 1).gather(1, y[:, None]).sum()
    alpha = torch.autograd.grad(s, f)[0].mean((2, 3))
    summed = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, feats))
    assert not torch.allclose(summed, per_sample_oracle(feats, head, y), atol=1e-6)


def test_custom_pooling_forces_autograd():
    backbone, heads, x, y, a = setup("linear")
    max_pool = lambda f: f.amax((2, 3))  # noqa: E731 - not position-independent
    cam = gradcam(backbone(x), heads, [y, a], pooling=max_pool)
    assert cam.backend == "autograd"
    with pytest.raises(ValueError, match="custom pooling"):
        gradcam(backbone(x), heads, [y, a], pooling=max_pool, backend="closed_form")
    avg = gradcam(backbone(x), heads, [y, a])
    assert not torch.allclose(cam.maps, avg.maps)


def test_fused_backend_refuses_what_it_cannot_compute():
    backbone, heads, x, y, a = setup("linear")
    with pytest.raises(ValueError, match="exactly two maps"):
        gradcam(backbone(x), heads, [y, a], backend="fused")  # no measure
    with pytest.raises(ValueError, match="Unknown Grad-CAM backend"):
        gradcam(backbone(x), heads, [y, a], backend="hooks")


def test_auto_picks_closed_form_on_cpu():
    backbone, heads, x, y, a = setup("mlp_relu")
    assert gradcam(backbone(x), heads, [y, a], measure="cosine").backend == "closed_form"


# ------------------------------------------------------------------ API details

def test_predicted_targets_and_no_grad():
    backbone, heads, x, y, a = setup("linear")
    feats = backbone(x)
    cam = gradcam(feats, heads, [None, None])
    assert torch.equal(cam.targets[0], cam.logits[0].argmax(1))
    assert torch.equal(cam.targets[1], cam.logits[1].argmax(1))
    explicit = gradcam(feats, heads, cam.targets)
    torch.testing.assert_close(cam.maps, explicit.maps, rtol=0, atol=0)
    with torch.no_grad():
        frozen = gradcam(backbone(x), heads, cam.targets, measure="cosine")
    assert not frozen.maps.requires_grad and not frozen.overlap.requires_grad
    torch.testing.assert_close(frozen.maps, explicit.maps.detach(), rtol=0, atol=0)


def test_bad_arguments_are_clear():
    backbone, heads, x, y, a = setup("linear")
    feats = backbone(x)
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        gradcam(feats.mean((2, 3)), heads, [y, a])
    with pytest.raises(ValueError, match="one target tensor per head"):
        gradcam(feats, heads, [y])
    with pytest.raises(ValueError, match="Unknown overlap measure 'dice'"):
        gradcam(feats, heads, [y, a], measure="dice")
    with pytest.raises(ValueError, match="Unknown Grad-CAM score"):
        gradcam(feats, heads, [y, a], score="softmax")
    with pytest.raises(ValueError, match="exactly two heads"):
        gradcam(feats, heads[:1], [y], measure="cosine")


# ------------------------------------------------------------------ overlap measures

@pytest.mark.parametrize("measure", ["cosine", "pearson", "soft_iou"])
@pytest.mark.parametrize("scale", [0.0, 1e-6, 1e-3])
def test_overlap_gradients_are_finite_and_bounded_near_zero(measure, scale):
    torch.manual_seed(0)
    eps = 1e-6
    a = (torch.rand(4, 49, dtype=torch.float64) * scale).requires_grad_()
    b = torch.rand(4, 49, dtype=torch.float64).requires_grad_()
    value = overlap_lib.overlap(a, b, measure, eps)
    ga, gb = torch.autograd.grad(value.sum(), [a, b])
    assert torch.isfinite(value).all() and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert ga.norm(dim=1).max() <= 10 / eps ** 0.5


def test_plain_cosine_similarity_explodes_where_ours_does_not():
    a = torch.full((1, 49), 1e-7, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 49, dtype=torch.float64)
    plain = torch.autograd.grad(F.cosine_similarity(a, b).sum(), a)[0].norm()
    ours = torch.autograd.grad(overlap_lib.cosine(a, b).sum(), a)[0].norm()
    assert plain > 1e5 and ours < 1e3


def test_overlap_values_at_the_edges():
    zero = torch.zeros(2, 9, dtype=torch.float64)
    ones = torch.ones(2, 9, dtype=torch.float64)
    ramp = torch.arange(18, dtype=torch.float64).reshape(2, 9)
    assert torch.equal(overlap_lib.soft_iou(zero, zero), torch.zeros(2))  # not 1
    torch.testing.assert_close(overlap_lib.soft_iou(ramp, ramp), torch.ones(2, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(overlap_lib.cosine(ramp, 3 * ramp), torch.ones(2, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert torch.equal(overlap_lib.pearson(ones, ramp), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(overlap_lib.pearson(ramp, -ramp + 40),
                               -torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    half = ramp.clone()
    half[:, 4:] = 0
    expected = (half * ramp).sum(1) / ((half * half).sum(1) * (ramp * ramp).sum(1)).sqrt()
    torch.testing.assert_close(overlap_lib.cosine(half, ramp, 0.0), expected)


@pytest.mark.parametrize("measure", ["cosine", "pearson", "soft_iou"])
def test_overlap_gradcheck(measure):
    torch.manual_seed(1)
    a = (torch.rand(3, 6, dtype=torch.float64) + 0.1).requires_grad_()
    b = (torch.rand(3, 6, dtype=torch.float64) + 0.1).requires_grad_()
    if measure == "soft_iou":  # keep away from min/max ties
        b = (a.detach() + 0.3 * torch.sign(torch.randn(3, 6, dtype=torch.float64))).abs()
        b = b.requires_grad_()
    assert torch.autograd.gradcheck(lambda u, v: overlap_lib.overlap(u, v, measure), (a, b))


# ------------------------------------------------------------------ public reference: captum

def test_matches_captum_layer_gradcam_on_a_small_resnet():
    """captum's LayerGradCam with create_graph (a public, independent implementation) gives
    the same map and the same gradient into the head and the backbone."""
    captum_attr = pytest.importorskip("captum.attr")
    from domainbed import networks

    torch.manual_seed(0)
    hp = {"resnet18": True, "pretrained": False, "resnet_dropout": 0.0, "freeze_bn": True}
    featurizer = networks.ResNet((3, 96, 96), hp).double().eval()
    head = nn.Linear(featurizer.n_outputs, 5).double()
    model = nn.Sequential(featurizer, head).eval()
    x = torch.randn(3, 3, 96, 96, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])

    lgc = captum_attr.LayerGradCam(model, featurizer.network.layer4)
    ref = lgc.attribute(x, target=y, relu_attributions=True,
                        grad_kwargs={"create_graph": True})[:, 0]
    cam = gradcam(featurizer.forward_maps(x), [head], [y], score="logit")
    ours = cam.maps[:, 0]
    assert ours.shape == ref.shape == (3, 3, 3)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)

    conv = featurizer.network.layer4[1].conv2.weight
    g_ref = torch.autograd.grad(ref.square().sum(), [head.weight, conv])
    g_ours = torch.autograd.grad(ours.square().sum(), [head.weight, conv])
    assert g_ref[0].abs().max() > 0
    for gr, go in zip(g_ref, g_ours):
        torch.testing.assert_close(go, gr, rtol=0, atol=1e-12)
