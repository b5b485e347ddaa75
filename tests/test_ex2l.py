"""EX2L: its loss, its diagnostics, its hparams, registration, and a run through train.py."""
import json

import pytest
import torch
from ex2l_helpers import batches, build

from domainbed import algorithms, hparams_registry
from domainbed.lib import misc
from domainbed.plugins import load_plugins
from domainbed.scripts import train
from ex2l_domainbed.algorithm import EX2L, EX2LHparamError, ex2l_hparams
from ex2l_domainbed.formulation_values import DEFAULT_FORMULATION, FORMULATION_VALUES

torch.set_num_threads(1)
load_plugins()

DIAGNOSTICS = {"loss", "loss_label", "loss_confounder", "overlap", "confounder_acc",
               "label_map_mass", "confounder_map_mass", "label_map_zero_frac",
               "confounder_map_zero_frac", "penalty_weight"}


def test_registered_after_erm_and_groupdro_with_hparams():
    names = algorithms.ALGORITHMS
    assert names.index("EX2L") == names.index("GroupDRO") + 1 and names.count("EX2L") == 1
    assert algorithms.get_algorithm_class("EX2L") is EX2L and EX2L.USES_ATTRIBUTES
    literal = {
        "ex2l_lambda": 1.0, "ex2l_beta": 1.0, "ex2l_overlap": "cosine", "ex2l_target": "true",
        "ex2l_confounder_grad": True, "ex2l_warmup_steps": 0, "ex2l_gradcam": "auto",
        "ex2l_score": "log_softmax", "ex2l_detach_confounder": False,
        "ex2l_detach_label": False, "ex2l_conditional_confounder": False,
        "ex2l_confounder_lr_mult": 1.0, "ex2l_confounder_balanced": False,
        "ex2l_penalty_path": "both"}
    hp = hparams_registry.default_hparams("EX2L_Literal", "Debug28")
    assert {k: hp[k] for k in hp if k.startswith("ex2l_")} == literal
    hp = hparams_registry.default_hparams("EX2L", "Debug28")  # the chosen formulation's values
    assert {k: hp[k] for k in hp if k.startswith("ex2l_")} == \
        {**literal, **FORMULATION_VALUES[DEFAULT_FORMULATION]}
    assert not any(k.startswith("ex2l_") for k in hparams_registry.default_hparams("ERM", "Debug28"))
    rnd = hparams_registry.random_hparams("EX2L", "Debug28", 7)
    expected = 10 ** __import__("numpy").random.RandomState(
        misc.seed_hash(7, "ex2l_lambda")).uniform(-1, 1)
    assert rnd["ex2l_lambda"] == expected  # upstream's per-name seeding rule
    assert rnd == hparams_registry.random_hparams("EX2L", "Debug28", 7)


def test_register_is_idempotent():
    from ex2l_domainbed import plugin
    plugin.register()
    plugin.register()
    assert algorithms.ALGORITHMS.count("EX2L") == 1
    assert hparams_registry._HOOKS.count(ex2l_hparams) == 1


def test_update_returns_the_loss_and_every_diagnostic():
    algorithm, dataset = build()
    out = algorithm.update(batches(dataset))
    assert set(out) == DIAGNOSTICS and all(type(v) is float for v in out.values())
    hp = algorithm.hparams
    assert out["loss"] == pytest.approx(out["loss_label"] + hp["ex2l_beta"] * out["loss_confounder"]
                                        + hp["ex2l_lambda"] * out["overlap"], rel=1e-5)
    assert 0 <= out["overlap"] <= 1 and 0 <= out["confounder_acc"] <= 1
    assert out["label_map_mass"] > 0 and out["confounder_map_mass"] > 0
    assert algorithm.confounder_classifier.out_features == 3  # environments of Debug28


def test_confounder_is_the_attribute_when_the_harness_passes_its_size():
    algorithm, dataset = build(dataset_name="DebugAttr28", num_attributes=2)
    assert algorithm.confounder_classifier.out_features == 2
    mbs = batches(dataset, with_attributes=True)
    algorithm.update(mbs)
    with pytest.raises(ValueError, match="received \\(x, y\\) pairs"):
        algorithm.update([mb[:2] for mb in mbs])
    # without num_attributes, triples are accepted and the environment is the confounder
    env_version, _ = build(dataset_name="DebugAttr28")
    assert env_version.confounder_classifier.out_features == 3
    env_version.update(mbs)


def _label_params(algorithm):
    return [p.detach().clone() for p in [*algorithm.featurizer.parameters(),
                                         *algorithm.classifier.parameters()]]


def test_without_penalty_and_confounder_loss_it_is_erm():
    erm, dataset = build("ERM")
    ex2l, _ = build(ex2l_lambda=0.0, ex2l_beta=0.0)
    for a, b in zip(_label_params(erm), _label_params(ex2l)):
        assert torch.equal(a, b)  # same initialisation
    mbs = batches(dataset)
    erm.update(mbs)
    out = ex2l.update(mbs)
    for a, b in zip(_label_params(erm), _label_params(ex2l)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert out["loss"] == pytest.approx(out["loss_label"])


@pytest.mark.parametrize("confounder_grad", [False, True])
def test_confounder_grad_decides_whether_its_loss_trains_the_featurizer(confounder_grad):
    erm, dataset = build("ERM")
    ex2l, _ = build(ex2l_lambda=0.0, ex2l_beta=1.0, ex2l_confounder_grad=confounder_grad)
    head_before = ex2l.confounder_classifier.weight.detach().clone()
    mbs = batches(dataset)
    erm.update(mbs)
    ex2l.update(mbs)
    same = all(torch.allclose(a, b, atol=1e-6)
               for a, b in zip(_label_params(erm), _label_params(ex2l)))
    assert same == (not confounder_grad)
    assert not torch.equal(head_before, ex2l.confounder_classifier.weight)


def test_the_penalty_changes_the_update():
    plain, dataset = build(ex2l_lambda=0.0)
    penalised, _ = build(ex2l_lambda=10.0)
    mbs = batches(dataset)
    plain.update(mbs)
    penalised.update(mbs)
    assert not all(torch.allclose(a, b) for a, b in zip(_label_params(plain),
                                                        _label_params(penalised)))


def test_warmup_ramps_the_penalty_in_linearly():
    algorithm, dataset = build(ex2l_lambda=2.0, ex2l_warmup_steps=4)
    weights = [algorithm.update(batches(dataset))["penalty_weight"] for _ in range(6)]
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_autograd_and_closed_form_backends_give_the_same_step():
    results = []
    for backend in ("closed_form", "autograd"):
        algorithm, dataset = build(ex2l_gradcam=backend, ex2l_lambda=5.0)
        algorithm.double()
        mbs = [(x.double(), y) for x, y in batches(dataset)]
        out = algorithm.update(mbs)
        results.append((out, _label_params(algorithm)))
    (out_c, p_c), (out_a, p_a) = results
    assert out_c["overlap"] == pytest.approx(out_a["overlap"], abs=1e-12)
    for a, b in zip(p_c, p_a):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_predict_uses_the_label_head_only():
    algorithm, dataset = build()
    x = batches(dataset)[0][0]
    algorithm.eval()
    with torch.no_grad():
        expected = algorithm.classifier(algorithm.featurizer(x))
        assert torch.equal(algorithm.predict(x), expected)
        assert algorithm.predict(x).shape == (8, 2)


@pytest.mark.parametrize("overrides,needle", [
    ({"ex2l_overlap": "dice"}, "ex2l_overlap='dice' is not one of cosine, pearson, soft_iou"),
    ({"ex2l_target": "predicted"}, "ex2l_target"),
    ({"ex2l_gradcam": "hooks"}, "ex2l_gradcam"),
    ({"ex2l_lambda": -1.0}, "ex2l_lambda must be >= 0"),
    ({"ex2l_target": "all", "ex2l_gradcam": "fused"}, "ex2l_target=all explains every class"),
])
def test_bad_hparam_values_are_clear_errors(overrides, needle):
    with pytest.raises(EX2LHparamError, match=needle.replace("(", r"\(")):
        build(**overrides)
    assert issubclass(EX2LHparamError, misc.UserInputError)


def test_train_cli_refuses_a_bad_value_before_any_work(tmp_path, run_main):
    out = tmp_path / "run"
    res = run_main(train.main, "--dataset", "Debug28", "--algorithm", "EX2L",
                   "--output_dir", str(out), "--steps", "2",
                   "--hparams", '{"ex2l_overlap": "dice"}')
    assert res.returncode == 2
    assert "ex2l_overlap='dice'" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "done").exists() and not (out / "results.jsonl").exists()
    assert not out.exists()  # refused before the output folder is made


def test_train_logs_diagnostics_and_model_reloads(tmp_path, run_main):
    out = tmp_path / "run"
    res = run_main(train.main, "--dataset", "DebugAttr28", "--algorithm", "EX2L",
                   "--output_dir", str(out), "--steps", "5", "--checkpoint_freq", "2",
                   "--hparams", '{"batch_size": 8}')
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    assert [r["step"] for r in records] == [0, 2, 4]
    for r in records:
        assert DIAGNOSTICS <= set(r) and "env0_in_wga" in r
    saved = torch.load(out / "model.pkl", weights_only=True)
    assert saved["model_num_attributes"] == 2
    model = algorithms.from_checkpoint(saved)
    assert model.confounder_classifier.out_features == 2
    assert int(model.update_count) == 5
    x = torch.randn(4, 3, 28, 28)
    model.eval()
    again = algorithms.from_checkpoint(saved).eval()
    assert torch.equal(model.predict(x), again.predict(x))


# ------------------------------------------------------------------ feature maps of featurizers

class _UpstreamStyleResNet(torch.nn.Module):
    """Upstream's layout: `.network` is a torchvision ResNet with fc removed, then dropout."""

    def __init__(self, timm_style=False):
        super().__init__()
        import torchvision
        net = torchvision.models.resnet18(weights=None)
        net.fc = torch.nn.Identity()
        if timm_style:  # timm ResNets expose forward_features (ending at layer4)
            def forward_features(x, n=net):
                x = n.maxpool(torch.relu(n.bn1(n.conv1(x))))
                return n.layer4(n.layer3(n.layer2(n.layer1(x))))
            net.forward_features = forward_features
            net.relu = None  # timm names it act1: the adapter must not need it
            net.forward = lambda x, n=net: n.fc(n.forward_features(x).mean((2, 3)))
        self.network = net
        self.dropout = torch.nn.Dropout(0.0)
        self.n_outputs = 512

    def forward(self, x):
        return self.dropout(self.network(x))


class _UpstreamStyleMNIST(torch.nn.Module):
    """Upstream's MNIST_CNN layout (no forward_maps): conv/ReLU/GroupNorm x4, then GAP."""

    n_outputs = 128

    def __init__(self):
        super().__init__()
        from domainbed.networks import MNIST_CNN
        ours = MNIST_CNN((3, 28, 28))
        for name in ["conv1", "conv2", "conv3", "conv4", "bn0", "bn1", "bn2", "bn3"]:
            setattr(self, name, getattr(ours, name))

    def forward(self, x):
        x = self.bn0(torch.relu(self.conv1(x)))
        x = self.bn1(torch.relu(self.conv2(x)))
        x = self.bn2(torch.relu(self.conv3(x)))
        return self.bn3(torch.relu(self.conv4(x))).mean((2, 3))


@pytest.mark.parametrize("make", [
    lambda: __import__("domainbed.networks", fromlist=["x"]).MNIST_CNN((3, 28, 28)),
    _UpstreamStyleMNIST, lambda: _UpstreamStyleResNet(),
    lambda: _UpstreamStyleResNet(timm_style=True)])
def test_split_featurizer_reproduces_the_featurizer(make):
    from ex2l_domainbed.feature_maps import split_featurizer
    torch.manual_seed(0)
    featurizer = make().eval()
    size = 28 if featurizer.n_outputs == 128 else 64
    x = torch.randn(2, 3, size, size)
    forward_maps, neck = split_featurizer(featurizer)
    maps = forward_maps(x)
    pooled = maps.mean((2, 3))
    with torch.no_grad():
        torch.testing.assert_close((neck or torch.nn.Identity())(pooled), featurizer(x))


def test_split_featurizer_refuses_an_mlp():
    from domainbed import networks
    from ex2l_domainbed.feature_maps import UnsupportedFeaturizer, split_featurizer
    mlp = networks.MLP(5, 4, {"mlp_width": 4, "mlp_dropout": 0.0, "mlp_depth": 3})
    with pytest.raises(UnsupportedFeaturizer, match="no last spatial feature map|has none"):
        split_featurizer(mlp)


# ------------------------------------------------------------------ keeping the confounder honest

def test_detached_confounder_weights_get_no_gradient_from_the_penalty():
    from ex2l_domainbed.gradcam import gradcam
    torch.manual_seed(0)
    feats = torch.randn(4, 6, 5, 5, dtype=torch.float64).relu().requires_grad_()
    heads = [torch.nn.Linear(6, 3).double(), torch.nn.Linear(6, 2).double()]
    y, a = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 0])
    for backend in ("closed_form", "autograd"):
        cam = gradcam(feats, heads, [y, a], measure="cosine", backend=backend,
                      detach_weights=(False, True))
        g_label, g_conf, g_feats = torch.autograd.grad(
            cam.overlap.sum(), [heads[0].weight, heads[1].weight, feats], allow_unused=True)
        assert g_conf is None or torch.all(g_conf == 0)
        assert g_label.abs().sum() > 0 and g_feats.abs().sum() > 0
        plain = gradcam(feats, heads, [y, a], measure="cosine", backend=backend)
        torch.testing.assert_close(cam.maps, plain.maps, rtol=0, atol=0)  # same values


def test_honest_confounder_option_trains_its_head_by_its_loss_only():
    honest, dataset = build(ex2l_detach_confounder=True, ex2l_beta=0.0, ex2l_lambda=10.0)
    head = honest.confounder_classifier.weight.detach().clone()
    honest.update(batches(dataset))
    assert torch.equal(head, honest.confounder_classifier.weight)  # beta 0: nothing moves it
    literal, _ = build(ex2l_beta=0.0, ex2l_lambda=10.0)
    head = literal.confounder_classifier.weight.detach().clone()
    literal.update(batches(dataset))
    assert not torch.equal(head, literal.confounder_classifier.weight)  # the penalty does


def test_features_only_penalty_moves_no_head():
    """With both maps' weights detached (beta 0), the penalty's gradient reaches the
    featurizer but neither head: the heads' gradients are those of lambda 0."""
    grads = {}
    for lam in (0.0, 10.0):
        algorithm, dataset = build(ex2l_detach_label=True, ex2l_detach_confounder=True,
                                   ex2l_beta=0.0, ex2l_lambda=lam)
        algorithm.double()
        algorithm.update([(x.double(), y) for x, y in batches(dataset)])
        grads[lam] = [p.grad.clone() for p in (algorithm.classifier.weight,
                                               *algorithm.featurizer.parameters())]
    torch.testing.assert_close(grads[0.0][0], grads[10.0][0], rtol=0, atol=1e-12)
    assert any(not torch.allclose(g, h) for g, h in zip(grads[0.0][1:], grads[10.0][1:]))
    literal, dataset = build(ex2l_detach_confounder=True, ex2l_beta=0.0, ex2l_lambda=10.0)
    literal.double()
    literal.update([(x.double(), y) for x, y in batches(dataset)])
    assert not torch.allclose(literal.classifier.weight.grad, grads[0.0][0])  # not detached


def test_all_class_maps_are_the_sums_of_every_class_map():
    from ex2l_domainbed.gradcam import gradcam
    from ex2l_domainbed.gradcam.overlap import cosine
    algorithm, dataset = build(ex2l_target="all")
    x, y = torch.cat([b[0] for b in batches(dataset)]), torch.cat([b[1] for b in batches(dataset)])
    a = torch.zeros_like(y)
    algorithm.eval()

    def summed(head, n):
        return sum(gradcam(algorithm.forward_maps(x), [head], [torch.full_like(y, j)],
                           neck=algorithm.neck).maps[:, 0] for j in range(n))
    with torch.no_grad():
        cam, label_map, conf_map, overlap = algorithm._explain(x, y, a)
        torch.testing.assert_close(label_map, summed(algorithm.classifier, 2))
        torch.testing.assert_close(conf_map, summed(algorithm.confounder_classifier, 3))
    torch.testing.assert_close(overlap, cosine(label_map, conf_map))
    assert torch.equal(cam.logits[0], algorithm.predict(x))


def test_conditional_confounder_predicts_the_attribute_given_the_class():
    algorithm, dataset = build(dataset_name="DebugAttr28", num_attributes=2,
                               ex2l_conditional_confounder=True, ex2l_confounder_grad=False)
    x = torch.cat([b[0] for b in batches(dataset, with_attributes=True)])
    y = torch.tensor([0, 0, 1, 1] * (len(x) // 4))
    a = (y == 1).long()  # class 0 only with attribute 0, class 1 only with attribute 1
    mbs = [(x[:len(x) // 2], y[:len(x) // 2], a[:len(x) // 2]),
           (x[len(x) // 2:], y[len(x) // 2:], a[len(x) // 2:])]
    out = algorithm.update(mbs)
    assert algorithm.cooccurrence.tolist() == [[len(x) // 2, 0], [0, len(x) // 2]]
    # one attribute per class: the attribute is certain given the class, the loss ~0
    assert out["loss_confounder"] == pytest.approx(0.0, abs=1e-6)
    assert out["confounder_acc"] == 1.0
    features = torch.randn(len(y), algorithm.featurizer.n_outputs)
    probs = algorithm._confounder_head(y)(features).softmax(1)
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(a, 2).float())
    # without the option the confounder is an ordinary classifier and the buffer is absent
    plain, _ = build(dataset_name="DebugAttr28", num_attributes=2)
    assert not hasattr(plain, "cooccurrence") and plain.update(mbs)["loss_confounder"] > 0.1


def test_confounder_learning_rate_multiplier():
    algorithm, _ = build(ex2l_confounder_lr_mult=10.0)
    body, confounder = algorithm.optimizer.param_groups
    assert confounder["lr"] == pytest.approx(10 * body["lr"])
    assert {id(p) for p in confounder["params"]} == {
        id(p) for p in algorithm.confounder_classifier.parameters()}
    with pytest.raises(EX2LHparamError, match="ex2l_confounder_lr_mult must be >= 0"):
        build(ex2l_confounder_lr_mult=-1.0)


# ------------------------------------------------------------------ the attribute adversary

def test_attribute_dann_is_registered_and_reverses_the_gradient():
    from ex2l_domainbed.baselines import GradientReversal
    from ex2l_domainbed.formulations import FORMULATIONS  # EX2L's own rows come first
    assert algorithms.ALGORITHMS.index("AttributeDANN") == \
        algorithms.ALGORITHMS.index("EX2L") + 1 + len(FORMULATIONS)
    hp = hparams_registry.default_hparams("AttributeDANN", "Debug28")
    assert (hp["adv_lambda"], hp["adv_beta"]) == (1.0, 1.0)
    x = torch.randn(3, requires_grad=True)
    (GradientReversal.apply(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_attribute_dann_adversary_learns_while_features_are_pushed_away():
    algorithm, dataset = build("AttributeDANN", dataset_name="DebugAttr28", num_attributes=2,
                               adv_lambda=0.0)
    assert algorithm.adversary.out_features == 2
    mbs = batches(dataset, with_attributes=True)
    out = algorithm.update(mbs)
    assert set(out) == {"loss", "loss_label", "loss_adversary", "adversary_acc"}
    # with lambda 0 the adversary's loss does not reach the featurizer: ERM's step
    erm, _ = build("ERM", dataset_name="DebugAttr28")
    erm.update([mb[:2] for mb in mbs])
    for p, q in zip(_label_params(erm), _label_params(algorithm)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    reversed_, _ = build("AttributeDANN", dataset_name="DebugAttr28", num_attributes=2)
    reversed_.update(mbs)
    assert not all(torch.allclose(p, q) for p, q in zip(_label_params(erm),
                                                        _label_params(reversed_)))
    with pytest.raises(ValueError, match="pairs"):
        reversed_.update([mb[:2] for mb in mbs])
