"""EX2L: eXplaining to Learn (Medina, Minoza, Ibanez, 2026), as a DomainBed algorithm.

A label head and a concurrently trained confounder head (it predicts the nuisance
attribute: a Spawrious location, else the environment index) share one featurizer.
The loss penalises the similarity of their Grad-CAM maps on the last feature map:

    loss = CE(label) + beta * CE(confounder) + lambda_t * mean_b overlap(L_y(b), L_a(b))

where L_y is the label head's Grad-CAM for the true class and L_a the confounder head's
for the true attribute. Every choice the paper leaves open is an `ex2l_` hparam (see
`ex2l_hparams`). `update` returns the diagnostics that show how the penalty is met:
the overlap, the confounder head's accuracy, the mass of both maps and the share of
all-zero maps, so that a collapse of either map is visible in results.jsonl.

`ex2l_detach_confounder` keeps the confounder honest: its map's channel weights are
constants inside the penalty, so the penalty cannot make the confounder head
anti-predictive to silence its map; only its CE trains it (docs/ex2l.md).
`ex2l_detach_label` does the same for the label map, so the penalty cannot be met by
re-weighting the label head's channels: it must change the features themselves.
`ex2l_target: all` explains every class of both heads: each head's map is the sum of its
Grad-CAMs for all its classes, so evidence *against* a class (which the true class's
ReLU map hides) counts too: the maps show where any class (attribute) evidence is.
`ex2l_conditional_confounder` makes the confounder predict the attribute *given the
class*: its softmax runs only over the attributes seen with the sample's class so far
(a co-occurrence table kept as a buffer). Where class and attribute are strongly
correlated (one-to-one challenges) an unconditional confounder can read the object,
and its map then pushes the label map off the object. `ex2l_confounder_balanced` attacks
the same shortcut in the loss instead: every (class, attribute) group weighs alike in the
confounder's CE, so reading the class no longer pays.

The class only uses names that upstream DomainBed also has (`Algorithm`, `Featurizer`,
`Classifier`), so the same class runs inside an upstream checkout (see `plugin`).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms import Algorithm
from ex2l_domainbed import gradcam as gradcam_lib
from ex2l_domainbed.feature_maps import split_featurizer
from ex2l_domainbed.formulation_values import DEFAULT_FORMULATION, FORMULATION_VALUES
from ex2l_domainbed.gradcam import overlap as overlap_lib
from ex2l_domainbed.nuisance import nuisance_labels

try:  # this harness reports bad input as one line; upstream DomainBed has no such class
    from domainbed.lib.misc import UserInputError as _InputError
except ImportError:  # pragma: no cover - exercised inside an upstream checkout
    _InputError = ValueError

TARGETS = ("true", "pred", "all")
# Which map carries the penalty's gradient: "label" treats the confounder map as a constant
# inside the overlap, "confounder" the label map (the path ablation of docs/lite_study.md).
PENALTY_PATHS = ("both", "label", "confounder")


class EX2LHparamError(_InputError):
    """An ex2l_ hparam with a value EX2L does not know."""


def ex2l_hparams(algorithm: str, dataset: str, define) -> None:
    """EX2L's hparams, for EX2L and its formulations (an hparams-registry hook).

    A formulation (a subclass, see `formulations`) fixes some values: they are its
    defaults, and its random search keeps them, so only the other hparams are searched.
    """
    from domainbed import algorithms  # this harness's or upstream's: both hold the classes
    cls = getattr(algorithms, algorithm, None)
    if not (isinstance(cls, type) and issubclass(cls, EX2L)):
        return
    define_ex2l(_with_fixed_values(define, cls.FIXED_HPARAMS) if cls.FIXED_HPARAMS else define)


def define_ex2l(define) -> None:
    """Call `define(name, default, random_fn, **spec)` for every ex2l_ hparam.

    Random-search ranges centre on the defaults; the categorical choices are searched only
    where the method leaves them open in a way that matters for accuracy. `low` and
    `choices` declare the accepted values (the harness checks --hparams against them).
    """
    define("ex2l_lambda", 1.0, lambda r: 10 ** r.uniform(-1, 1), low=0.0)
    define("ex2l_beta", 1.0, lambda r: 10 ** r.uniform(-1, 0.5), low=0.0)
    define("ex2l_overlap", "cosine", lambda r: "cosine", choices=gradcam_lib.MEASURES)
    define("ex2l_target", "true", lambda r: "true", choices=TARGETS)
    define("ex2l_confounder_grad", True, lambda r: bool(r.choice([True, False])))
    define("ex2l_warmup_steps", 0, lambda r: int(r.choice([0, 100, 300])), low=0)
    define("ex2l_gradcam", "auto", lambda r: "auto", choices=gradcam_lib.BACKENDS)
    define("ex2l_score", "log_softmax", lambda r: "log_softmax", choices=gradcam_lib.SCORES)
    define("ex2l_detach_confounder", False, lambda r: False)
    define("ex2l_detach_label", False, lambda r: False)
    define("ex2l_conditional_confounder", False, lambda r: False)
    define("ex2l_confounder_lr_mult", 1.0, lambda r: 1.0, low=0.0)
    define("ex2l_confounder_balanced", False, lambda r: False)
    define("ex2l_penalty_path", "both", lambda r: "both", choices=PENALTY_PATHS)


def _with_fixed_values(define, fixed: dict[str, Any]):
    def define_fixed(name: str, default: Any, random_fn, **spec) -> None:
        if name in fixed:
            value = fixed[name]
            define(name, value, lambda r: value, **spec)
        else:
            define(name, default, random_fn, **spec)
    return define_fixed


def declared_values() -> dict[str, dict[str, Any]]:
    """{name: {"low": ..., "choices": ...}} as `ex2l_hparams` declares them."""
    declared: dict[str, dict[str, Any]] = {}
    define_ex2l(lambda name, default, random_fn, **spec: declared.__setitem__(name, spec))
    return declared


class EX2L(Algorithm):
    """ERM plus a confounder head and a Grad-CAM overlap penalty between the two heads."""

    USES_ATTRIBUTES = True
    # A formulation (a subclass, see `formulations`) fixes some ex2l_ hparams by default;
    # EX2L itself runs the chosen default formulation (formulation_values).
    FIXED_HPARAMS: dict[str, Any] = FORMULATION_VALUES[DEFAULT_FORMULATION]

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.check_hparams(hparams)
        self.num_classes = num_classes
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.forward_maps, self.neck = split_featurizer(self.featurizer)
        nonlinear = self.hparams["nonlinear_classifier"]
        self.classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, nonlinear)
        # The confounder: the dataset's attribute when the harness passes its size,
        # otherwise the training-environment index (always so inside upstream DomainBed).
        self.confounder_is_attribute = bool(num_attributes)
        n_confounders = num_attributes if num_attributes else num_domains
        self.num_confounders = n_confounders
        self.confounder_classifier = networks.Classifier(
            self.featurizer.n_outputs, n_confounders, nonlinear)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        # Adam is invariant to the scale of a loss, so with the confounder on detached
        # features beta cannot speed its head up; its own learning rate can.
        lr = self.hparams["lr"]
        groups = [{"params": [*self.featurizer.parameters(), *self.classifier.parameters()]},
                  {"params": list(self.confounder_classifier.parameters()),
                   "lr": lr * self.hparams.get("ex2l_confounder_lr_mult", 1.0)}]
        self.optimizer = torch.optim.Adam(groups, lr=lr,
                                          weight_decay=self.hparams["weight_decay"])
        self.register_buffer("update_count", torch.tensor([0]))
        if self._counts_groups():
            self.register_buffer("cooccurrence", torch.zeros(num_classes, n_confounders))

    @staticmethod
    def check_hparams(hparams: dict[str, Any]) -> None:
        """Refuse unknown categorical values and negative weights before any work is done
        (also inside upstream DomainBed, whose registry checks no values)."""
        for name, spec in declared_values().items():
            if name not in hparams:  # an older checkpoint's hparams: the default applies
                continue
            value, valid = hparams[name], spec.get("choices")
            if valid is not None and value not in valid:
                raise EX2LHparamError(
                    f"hparam {name}={value!r} is not one of {', '.join(valid)}. "
                    f"Pass e.g. --hparams '{{\"{name}\": \"{valid[0]}\"}}'.")
            low = spec.get("low")
            if low is not None and value is not None and not (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value >= low):
                raise EX2LHparamError(f"hparam {name} must be >= {low:g}, got {value!r}.")
        if hparams["ex2l_target"] == "all" and hparams["ex2l_gradcam"] == "fused":
            raise EX2LHparamError(
                "hparam ex2l_target=all explains every class, which the fused Grad-CAM kernel "
                "(two maps) cannot do. Pass --hparams '{\"ex2l_gradcam\": \"auto\"}'.")

    def penalty_weight(self) -> torch.Tensor:
        """lambda, ramped linearly from 0 at step 0 to full weight at ex2l_warmup_steps.

        A tensor computed from the step-count buffer, so reading it never syncs a GPU."""
        warmup = self.hparams["ex2l_warmup_steps"]
        count = self.update_count.float().squeeze(0)
        ramp = (count / warmup).clamp(max=1.0) if warmup > 0 else torch.ones_like(count)
        return self.hparams["ex2l_lambda"] * ramp

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([mb[0] for mb in minibatches])
        y = torch.cat([mb[1] for mb in minibatches])
        a = nuisance_labels(minibatches, self.confounder_is_attribute, "EX2L")
        if hasattr(self, "cooccurrence"):
            self.cooccurrence.index_put_((y, a), torch.ones_like(y, dtype=self.cooccurrence.dtype),
                                         accumulate=True)
        cam, label_map, confounder_map, overlap = self._explain(x, y, a)
        label_logits, confounder_logits = cam.logits[0], cam.logits[-1]
        loss_label = F.cross_entropy(label_logits, y)
        if not self.hparams["ex2l_confounder_grad"]:  # the confounder CE trains its head only
            confounder_logits = self._confounder_head(y)(cam.pooled.detach())
        loss_confounder = self._confounder_loss(confounder_logits, y, a)
        overlap = overlap.mean()
        lam = self.penalty_weight()
        loss = loss_label + self.hparams["ex2l_beta"] * loss_confounder + lam * overlap

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1

        maps = torch.stack([label_map, confounder_map], 1)
        return self._diagnostics(loss, loss_label, loss_confounder, overlap, lam, maps,
                                 confounder_logits, a)

    def _counts_groups(self) -> bool:
        """Whether the (class, attribute) co-occurrence counts are kept (a buffer, so they
        resume with the run): the conditional confounder and the balanced loss read them."""
        return bool(self.hparams.get("ex2l_conditional_confounder", False)
                    or self.hparams.get("ex2l_confounder_balanced", False))

    def _confounder_loss(self, logits: torch.Tensor, y: torch.Tensor,
                         a: torch.Tensor) -> torch.Tensor:
        """The confounder's CE; with ex2l_confounder_balanced every (class, attribute) group
        counts alike (each sample weighted by 1 / its group's count so far in training), so
        the class no longer tells the confounder the attribute."""
        if not self.hparams.get("ex2l_confounder_balanced", False):
            return F.cross_entropy(logits, a)
        weights = 1.0 / self.cooccurrence[y, a]  # >= 1 count: this batch is already counted
        losses = F.cross_entropy(logits, a, reduction="none")
        return (losses * weights).sum() / weights.sum()

    def _blocked_attributes(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, A] true where an attribute was never seen with the sample's class (only with
        ex2l_conditional_confounder; None otherwise)."""
        if not self.hparams.get("ex2l_conditional_confounder", False):
            return None
        return self.cooccurrence[y] == 0

    def _confounder_head(self, y: torch.Tensor):
        """The confounder head as its loss and map see it: conditional on the class, the
        attributes never seen with it get a logit of -1e4 (softmax weight 0)."""
        blocked = self._blocked_attributes(y)
        if blocked is None:
            return self.confounder_classifier
        head, bias = self.confounder_classifier, blocked.float() * -1e4
        return lambda z: head(z) + bias.to(z.dtype)

    def _explain(self, x, y, a):
        """The Grad-CAM maps of both heads, the label head's logits first and the
        confounder's last in `cam.logits`, and the per-sample overlap of the two maps."""
        target = self.hparams["ex2l_target"]
        detach = (self.hparams.get("ex2l_detach_label", False),
                  self.hparams.get("ex2l_detach_confounder", False))
        common = dict(neck=self.neck, score=self.hparams["ex2l_score"],
                      backend=self.hparams["ex2l_gradcam"])
        if target != "all":
            explain = [y, a] if target == "true" else [None, None]
            cam = gradcam_lib.gradcam(
                self.forward_maps(x), [self.classifier, self._confounder_head(y)], explain,
                measure=self.hparams["ex2l_overlap"], detach_weights=detach, **common)
            label_map, confounder_map = cam.maps[:, 0], cam.maps[:, 1]
            if self._penalty_path() == "both":
                return cam, label_map, confounder_map, cam.overlap
            return cam, label_map, confounder_map, self._overlap(label_map, confounder_map)
        # every class of both heads: one map per class, summed per head
        features = self.forward_maps(x)
        n_conf = self.num_confounders
        heads = [self.classifier] * self.num_classes + [self._confounder_head(y)] * n_conf
        classes = [torch.full_like(y, j) for j in range(self.num_classes)]
        classes += [torch.full_like(a, j) for j in range(n_conf)]
        cam = gradcam_lib.gradcam(
            features, heads, classes, detach_weights=(detach[0],) * self.num_classes
            + (detach[1],) * n_conf, **common)
        label_map = cam.maps[:, :self.num_classes].sum(1)
        confounder_maps = cam.maps[:, self.num_classes:]
        blocked = self._blocked_attributes(y)
        if blocked is not None:  # an attribute the class never had explains nothing
            confounder_maps = confounder_maps * (~blocked)[:, :, None, None]
        confounder_map = confounder_maps.sum(1)
        return cam, label_map, confounder_map, self._overlap(label_map, confounder_map)

    def _penalty_path(self) -> str:
        return self.hparams.get("ex2l_penalty_path", "both")

    def _overlap(self, label_map: torch.Tensor, confounder_map: torch.Tensor) -> torch.Tensor:
        """Per-sample overlap, with the map `ex2l_penalty_path` leaves out held constant."""
        path = self._penalty_path()
        if path == "label":
            confounder_map = confounder_map.detach()
        elif path == "confounder":
            label_map = label_map.detach()
        return overlap_lib.overlap(label_map, confounder_map, self.hparams["ex2l_overlap"])

    @staticmethod
    def _diagnostics(loss, loss_label, loss_confounder, overlap, lam, maps, confounder_logits,
                     a) -> dict[str, float]:
        """All logged values, read from the device in one transfer (one sync on CUDA), built
        with few ops: on small models every extra op is a visible share of the step."""
        mass = maps.detach().flatten(2).sum(2)  # [B, 2]: each map's positive evidence
        scalars = torch.stack([loss, loss_label, loss_confounder, overlap,
                               (confounder_logits.argmax(1) == a).float().mean(), lam]).detach()
        map_stats = torch.cat([mass.mean(0), (mass == 0).float().mean(0)])
        values = torch.cat([scalars, map_stats]).tolist()
        names = ["loss", "loss_label", "loss_confounder", "overlap", "confounder_acc",
                 "penalty_weight", "label_map_mass", "confounder_map_mass",
                 "label_map_zero_frac", "confounder_map_zero_frac"]
        return dict(zip(names, values))

    def predict(self, x):
        return self.network(x)
