"""What each EX2L option does: every case trains two steps with its option and checks the
behaviour the option exists for (not only that the loss stays finite)."""
import math

import pytest
import torch
from ex2l_helpers import batches, build

torch.set_num_threads(1)

# ------------------------------------------------------------------ what each option does
#
# Every case of test_options_train trains two steps with its option (every diagnostic
# finite), then checks the behaviour the option exists for. Gradients are compared in
# float64, from the same seed-0 initialisation and the same minibatches.

def _xya(algorithm, mbs):
    """The concatenated images, classes and confounder labels that `update` would use."""
    from ex2l_domainbed.nuisance import nuisance_labels
    x = torch.cat([mb[0] for mb in mbs])
    y = torch.cat([mb[1] for mb in mbs])
    return x, y, nuisance_labels(mbs, algorithm.confounder_is_attribute, "EX2L")


def _skewed_batches(dataset):
    """Debug28 batches (the confounder is the environment) in which class 0 never occurs in
    environment 1 and class 1 never in environment 0; environment 2 has both classes."""
    labels = [torch.zeros(8), torch.ones(8), torch.tensor([0, 1] * 4)]
    return [(x, lab.long()) for (x, _), lab in zip(batches(dataset), labels)]


def _loss_grads(mbs, **overrides):
    """name -> d loss / d parameter of one float64 update from the seed-0 initialisation
    (zeros where no gradient arrives)."""
    algorithm, _ = build(**overrides)
    algorithm.double()
    algorithm.update([(mb[0].double(), *mb[1:]) for mb in mbs])
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for n, p in algorithm.named_parameters()}


def penalty_grads(mbs, lam=10.0, **overrides):
    """name -> d overlap / d parameter in one update: the loss gradients with lambda and
    with lambda 0 differ by exactly the penalty's (lambda times it; `lam` replaces an
    ex2l_lambda in `overrides`)."""
    with_penalty = _loss_grads(mbs, **{**overrides, "ex2l_lambda": lam})
    without = _loss_grads(mbs, **{**overrides, "ex2l_lambda": 0.0})
    return {n: (with_penalty[n] - without[n]) / lam for n in with_penalty}


def confounder_ce_grads(mbs, **overrides):
    """name -> d CE(confounder) / d parameter in one update (beta 1 against beta 0)."""
    with_ce = _loss_grads(mbs, **{**overrides, "ex2l_lambda": 0.0, "ex2l_beta": 1.0})
    without = _loss_grads(mbs, **{**overrides, "ex2l_lambda": 0.0, "ex2l_beta": 0.0})
    return {n: with_ce[n] - without[n] for n in with_ce}


MODULES = ("featurizer", "classifier", "confounder_classifier")


def reach(grads):
    """module -> sum of |gradient| over its parameters."""
    return {m: sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(m + "."))
            for m in MODULES}


def assert_reaches(grads, **expected):
    """expected[module] True: a gradient arrives there; False: none at all."""
    got = reach(grads)
    for module, arrives in expected.items():
        if arrives:
            assert got[module] > 1e-8, (module, got)
        else:
            assert got[module] == pytest.approx(0.0, abs=1e-12), (module, got)


def assert_same_grads(a, b, rtol=1e-9):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=1e-12, msg=name)


def _explains_predictions(overrides, algorithm, mbs, outs):
    """target pred: each map explains its head's own prediction, not the true class; where
    the two agree the map is the true-class map."""
    pred_model, _ = build(**overrides)
    true_model, _ = build()  # same initialisation, true-class targets
    x, y, a = _xya(pred_model, mbs)
    with torch.no_grad():
        cam, label_map, conf_map, overlap = pred_model._explain(x, y, a)
        _, true_label_map, true_conf_map, _ = true_model._explain(x, y, a)
    pred_y, pred_a = cam.logits[0].argmax(1), cam.logits[1].argmax(1)
    assert torch.equal(cam.targets[0], pred_y) and torch.equal(cam.targets[1], pred_a)
    for pred, truth, m, m_true in ((pred_y, y, label_map, true_label_map),
                                   (pred_a, a, conf_map, true_conf_map)):
        same = pred == truth
        assert same.any() and (~same).any()  # the untrained heads are right on some only
        torch.testing.assert_close(m[same], m_true[same])
        assert not torch.allclose(m[~same], m_true[~same])
    assert pred_model.update(mbs)["overlap"] == pytest.approx(float(overlap.mean()), rel=1e-5)


def _sums_every_class(overrides, algorithm, mbs, outs):
    """target all: one map per class of each head (2 + 3), summed per head; the overlap is
    that of the sums, and the label map is not the true class's alone."""
    from ex2l_domainbed.gradcam.overlap import cosine
    x, y, a = _xya(algorithm, mbs)
    with torch.no_grad():
        cam, label_map, conf_map, overlap = algorithm._explain(x, y, a)
    assert cam.maps.shape[1] == 2 + 3
    assert [t.unique().tolist() for t in cam.targets] == [[0], [1], [0], [1], [2]]
    torch.testing.assert_close(label_map, cam.maps[:, :2].sum(1))
    torch.testing.assert_close(conf_map, cam.maps[:, 2:].sum(1))
    torch.testing.assert_close(overlap, cosine(label_map, conf_map))
    assert not torch.allclose(label_map, cam.maps[torch.arange(len(y)), y])


def _penalty_skips_label_head(overrides, algorithm, mbs, outs):
    """detach_label: the penalty sends no gradient into the label head's weights, still into
    the featurizer and the confounder head (by default it reaches all three)."""
    assert_reaches(penalty_grads(mbs, **overrides),
                   featurizer=True, classifier=False, confounder_classifier=True)
    assert_reaches(penalty_grads(mbs), featurizer=True, classifier=True,
                   confounder_classifier=True)


def _penalty_skips_confounder_head(overrides, algorithm, mbs, outs):
    """detach_confounder: the penalty sends no gradient into the confounder head's weights."""
    assert_reaches(penalty_grads(mbs, **overrides),
                   featurizer=True, classifier=True, confounder_classifier=False)


def _confounder_ce_spares_featurizer(overrides, algorithm, mbs, outs):
    """confounder_grad false: the confounder's CE trains its head only, no gradient into the
    featurizer (with the default it does); it never reaches the label head."""
    assert_reaches(confounder_ce_grads(mbs, **overrides),
                   featurizer=False, classifier=False, confounder_classifier=True)
    assert_reaches(confounder_ce_grads(mbs),
                   featurizer=True, classifier=False, confounder_classifier=True)


def _penalty_ramps_in(overrides, algorithm, mbs, outs):
    """warmup 2, lambda 2: the penalty weight is 0, 1, 2, 2 ...; the loss uses it; at step 0
    the penalty sends no gradient anywhere."""
    outs = outs + [algorithm.update(mbs) for _ in range(2)]
    assert [o["penalty_weight"] for o in outs] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    for o in outs:
        assert o["loss"] == pytest.approx(o["loss_label"] + o["loss_confounder"]
                                          + o["penalty_weight"] * o["overlap"], rel=1e-5)
    assert_reaches(penalty_grads(mbs, **overrides),
                   featurizer=False, classifier=False, confounder_classifier=False)


def _blocks_unseen_attributes(overrides, algorithm, mbs, outs):
    """conditional confounder: the co-occurrence table counts (class, environment) pairs;
    an environment never seen with the sample's class gets probability 0 (an ordinary head
    gives it some), the others keep theirs."""
    assert algorithm.cooccurrence.tolist() == [[16, 0, 8], [0, 16, 8]]  # 2 steps of 8+4
    x, y, a = _xya(algorithm, mbs)
    blocked = algorithm._blocked_attributes(y)
    assert blocked.tolist() == [[False, True, False] if c == 0 else [True, False, False]
                                for c in y.tolist()]
    with torch.no_grad():
        cam = algorithm._explain(x, y, a)[0]
        probs = cam.logits[1].softmax(1)
        plain = algorithm.confounder_classifier(cam.pooled).softmax(1)
    assert torch.all(probs[blocked] == 0) and torch.all(probs[~blocked] > 0)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(y)))
    assert torch.all(plain[blocked] > 0)


def _fused_matches_closed_form(overrides, algorithm, mbs, outs):
    """gradcam fused (the Triton kernel, in its CPU interpreter): one step's gradients equal
    the closed form's."""
    assert_same_grads(_loss_grads(mbs, **overrides),
                      _loss_grads(mbs, **{**overrides, "ex2l_gradcam": "closed_form"}))


def _autograd_matches_closed_form(overrides, algorithm, mbs, outs):
    """gradcam autograd (double backprop): one step's gradients equal the closed form's."""
    assert_same_grads(_loss_grads(mbs, **overrides),
                      _loss_grads(mbs, **{**overrides, "ex2l_gradcam": "closed_form"}))


def _masks_unseen_attribute_maps(overrides, algorithm, mbs, outs):
    """conditional + target all (MLP heads): the confounder map sums the maps of the
    attributes seen with the class only; a blocked attribute's own map is not empty, so the
    mask matters."""
    assert isinstance(algorithm.classifier, torch.nn.Sequential)  # nonlinear heads
    x, y, a = _xya(algorithm, mbs)
    blocked = algorithm._blocked_attributes(y)
    with torch.no_grad():
        cam, _, conf_map, _ = algorithm._explain(x, y, a)
    attribute_maps = cam.maps[:, 2:]
    assert (attribute_maps[blocked] > 0).any()
    torch.testing.assert_close(conf_map, (attribute_maps * ~blocked[:, :, None, None]).sum(1))
    assert not torch.allclose(conf_map, attribute_maps.sum(1))


def _explains_raw_logits(overrides, algorithm, mbs, outs):
    """score logit: a linear head's channel weights are its class row / (h*w); with the
    default log_softmax they are centred by the softmax: (W[y] - p @ W) / (h*w)."""
    default, _ = build()
    x, y, a = _xya(algorithm, mbs)
    hw = algorithm.forward_maps(x)[0, 0].numel()
    with torch.no_grad():
        for model, logit in ((algorithm, True), (default, False)):
            cam = model._explain(x, y, a)[0]
            for m, (head, target) in enumerate(((model.classifier, y),
                                                (model.confounder_classifier, a))):
                expected = head.weight[target]
                if not logit:
                    expected = expected - cam.logits[m].softmax(1) @ head.weight
                torch.testing.assert_close(cam.weights[:, m], expected / hw)


def _measures_overlap(overrides, algorithm, mbs, outs):
    """overlap soft_iou / pearson: the overlap is that measure of the two maps, which
    differs from the other measures of the same maps; update reports it."""
    from ex2l_domainbed.gradcam import overlap as overlap_lib
    measure = overrides["ex2l_overlap"]
    fresh, _ = build(**overrides)
    x, y, a = _xya(fresh, mbs)
    with torch.no_grad():
        _, label_map, conf_map, overlap = fresh._explain(x, y, a)
    values = {m: overlap_lib.overlap(label_map, conf_map, m) for m in overlap_lib.MEASURES}
    torch.testing.assert_close(overlap, getattr(overlap_lib, measure)(label_map, conf_map))
    torch.testing.assert_close(overlap, values[measure])
    assert all(not torch.allclose(values[measure], values[m]) for m in values if m != measure)
    assert fresh.update(mbs)["overlap"] == pytest.approx(float(overlap.mean()), rel=1e-5)


def _mlp_heads_closed_form_exact(overrides, algorithm, mbs, outs):
    """nonlinear classifier: both heads are MLPs; the closed form (a head-only VJP) is the
    backend used on the CPU and gives autograd's gradients."""
    assert isinstance(algorithm.classifier, torch.nn.Sequential)
    assert isinstance(algorithm.confounder_classifier, torch.nn.Sequential)
    x, y, a = _xya(algorithm, mbs)
    with torch.no_grad():
        assert algorithm._explain(x, y, a)[0].backend == "closed_form"
    assert_same_grads(_loss_grads(mbs, **overrides),
                      _loss_grads(mbs, **overrides, ex2l_gradcam="autograd"))


def _dropout_is_shared_by_maps_and_logits(overrides, algorithm, mbs, outs):
    """resnet_dropout on a featurizer with dropout (lite_cnn): in training, the pooled
    vector both heads read has about half its channels dropped (the rest scaled by 2), the
    logits are the heads of that vector, and the maps give the dropped channels no weight;
    without dropout the pooled vector is the plain average."""
    x, y, a = _xya(algorithm, mbs)
    with torch.no_grad():
        cam = algorithm._explain(x, y, a)[0]
        gap = algorithm.forward_maps(x).mean((2, 3))
        z = cam.pooled
        alive, kept = gap != 0, z != 0
        dropped = alive & ~kept
        assert 0.35 < dropped.sum() / alive.sum() < 0.65
        torch.testing.assert_close(z[kept], 2 * gap[kept])
        torch.testing.assert_close(cam.logits[0], algorithm.classifier(z))
        torch.testing.assert_close(cam.logits[1], algorithm.confounder_classifier(z))
        for m in range(2):
            assert torch.all(cam.weights[:, m][dropped] == 0)
            assert torch.all(cam.weights[:, m][kept] != 0)
        plain, _ = build(**{**overrides, "resnet_dropout": 0.0})
        torch.testing.assert_close(plain._explain(x, y, a)[0].pooled,
                                   plain.forward_maps(x).mean((2, 3)))


def _confounder_moves_faster(overrides, algorithm, mbs, outs):
    """confounder_lr_mult 10: the confounder head's param group has 10x the lr, so its first
    (Adam) step is 10x as long; the featurizer and label head take the same step."""
    body, confounder = algorithm.optimizer.param_groups
    assert confounder["lr"] == pytest.approx(10 * body["lr"])
    fast, _ = build(**overrides)
    slow, _ = build()
    start = {n: p.detach().clone() for n, p in slow.named_parameters()}
    fast.update(mbs)
    slow.update(mbs)
    fast_p, slow_p = dict(fast.named_parameters()), dict(slow.named_parameters())
    for name, p0 in start.items():
        if name.startswith("confounder_classifier."):
            torch.testing.assert_close(fast_p[name] - p0, 10 * (slow_p[name] - p0),
                                       rtol=1e-3, atol=1e-7)
            assert (slow_p[name] - p0).abs().max() > 0
        else:
            torch.testing.assert_close(fast_p[name], slow_p[name], rtol=0, atol=0)


def _balances_confounder_groups(overrides, algorithm, mbs, outs):
    """confounder_balanced: the confounder CE is the mean over (class, confounder) groups of
    each group's mean CE (the skewed batches' groups hold 8, 8, 4 and 4 samples), not the
    mean over samples; the counts are the buffer that resumes with the run."""
    fresh, _ = build(**overrides)
    x, y, a = _xya(fresh, mbs)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            fresh.confounder_classifier(fresh.featurizer(x)), a, reduction="none")
    keys = y * 3 + a
    per_group = [losses[keys == k].mean() for k in keys.unique()]
    first = fresh.update(mbs)
    assert first["loss_confounder"] == pytest.approx(float(torch.stack(per_group).mean()),
                                                     rel=1e-5)
    assert first["loss_confounder"] != pytest.approx(float(losses.mean()), rel=1e-3)
    assert algorithm.cooccurrence.sum() == 2 * len(y)
    assert "cooccurrence" in algorithm.state_dict()


def _penalty_through_one_map(overrides, algorithm, mbs, outs):
    """penalty_path label / confounder: the other map is a constant inside the overlap, so
    the penalty sends nothing into that map's head; the featurizer gets the gradient through
    the one map, and the two paths add up to the gradient of "both"."""
    path = overrides["ex2l_penalty_path"]
    without = _loss_grads(mbs, ex2l_lambda=0.0)  # lambda 0: the path changes nothing
    grads = {}
    for p in ("label", "confounder", "both"):
        with_penalty = _loss_grads(mbs, ex2l_lambda=10.0, ex2l_penalty_path=p)
        grads[p] = {n: (with_penalty[n] - without[n]) / 10.0 for n in without}
    assert_reaches(grads[path], featurizer=True, classifier=path == "label",
                   confounder_classifier=path == "confounder")
    both = grads["both"]
    assert_same_grads({n: grads["label"][n] + grads["confounder"][n] for n in both}, both,
                      rtol=1e-7)
    f = [n for n in both if n.startswith("featurizer.")]
    assert not all(torch.allclose(grads["label"][n], grads["confounder"][n]) for n in f)


OPTION_CASES = [
    pytest.param({"ex2l_target": "pred"}, batches, _explains_predictions, id="target-pred"),
    pytest.param({"ex2l_target": "all"}, batches, _sums_every_class, id="target-all"),
    pytest.param({"ex2l_detach_label": True}, batches, _penalty_skips_label_head,
                 id="detach-label"),
    pytest.param({"ex2l_detach_confounder": True}, batches, _penalty_skips_confounder_head,
                 id="detach-confounder"),
    pytest.param({"ex2l_confounder_grad": False}, batches, _confounder_ce_spares_featurizer,
                 id="confounder-grad-false"),
    pytest.param({"ex2l_warmup_steps": 2, "ex2l_lambda": 2.0}, batches, _penalty_ramps_in,
                 id="warmup"),
    pytest.param({"ex2l_conditional_confounder": True}, _skewed_batches,
                 _blocks_unseen_attributes, id="conditional"),
    pytest.param({"ex2l_conditional_confounder": True, "ex2l_gradcam": "fused"},
                 _skewed_batches, _fused_matches_closed_form, id="conditional-fused"),
    pytest.param({"ex2l_conditional_confounder": True, "ex2l_target": "all",
                  "nonlinear_classifier": True}, _skewed_batches,
                 _masks_unseen_attribute_maps, id="conditional-all-mlp"),
    pytest.param({"ex2l_score": "logit"}, batches, _explains_raw_logits, id="score-logit"),
    pytest.param({"ex2l_overlap": "soft_iou"}, batches, _measures_overlap, id="soft-iou"),
    pytest.param({"ex2l_overlap": "pearson"}, batches, _measures_overlap, id="pearson"),
    pytest.param({"ex2l_gradcam": "autograd"}, batches, _autograd_matches_closed_form,
                 id="autograd"),
    pytest.param({"ex2l_gradcam": "fused"}, batches, _fused_matches_closed_form, id="fused"),
    pytest.param({"nonlinear_classifier": True}, batches, _mlp_heads_closed_form_exact,
                 id="nonlinear-classifier"),
    pytest.param({"resnet_dropout": 0.5, "featurizer": "lite_cnn", "pretrained": False},
                 batches, _dropout_is_shared_by_maps_and_logits, id="dropout"),
    pytest.param({"ex2l_confounder_lr_mult": 10.0}, batches, _confounder_moves_faster,
                 id="confounder-lr-mult"),
    pytest.param({"ex2l_confounder_balanced": True}, _skewed_batches,
                 _balances_confounder_groups, id="confounder-balanced"),
    pytest.param({"ex2l_penalty_path": "label"}, batches, _penalty_through_one_map,
                 id="penalty-path-label"),
    pytest.param({"ex2l_penalty_path": "confounder"}, batches, _penalty_through_one_map,
                 id="penalty-path-confounder"),
]


@pytest.mark.parametrize("overrides, make_batches, check", OPTION_CASES)
def test_options_train(overrides, make_batches, check):
    """Two training steps with the option, every diagnostic finite; then what it does."""
    algorithm, dataset = build(**overrides)
    mbs = make_batches(dataset)
    outs = [algorithm.update(mbs) for _ in range(2)]
    for out in outs:
        assert all(math.isfinite(v) for v in out.values()), out
    check(overrides, algorithm, mbs, outs)
