"""AttributeDANN: a gradient-reversal adversary on the nuisance attribute (a DANN-style baseline).

EX2L's penalty can be met by making the shared features useless for predicting the
attribute, which is what an adversary does directly. So any claim about EX2L needs this
baseline: an attribute classifier on the pooled features, trained to predict the
attribute (the Spawrious location; the environment index where a dataset has none),
while a gradient-reversal layer hands the featurizer -adv_lambda times its gradient:

    loss = CE(label) + adv_beta * CE(attribute | GRL(z))

Unlike upstream's DANN (environment labels, a separate discriminator optimizer and
alternating steps) this is one joint step, as in Ganin & Lempitsky (2015).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms import Algorithm
from ex2l_domainbed.nuisance import nuisance_labels


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -scale on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def adversary_hparams(algorithm: str, dataset: str, define) -> None:
    """AttributeDANN's hparams (an hparams-registry hook)."""
    if algorithm != "AttributeDANN":
        return
    define("adv_lambda", 1.0, lambda r: 10 ** r.uniform(-1, 1), low=0.0)
    define("adv_beta", 1.0, lambda r: 10 ** r.uniform(-1, 0.5), low=0.0)


class AttributeDANN(Algorithm):
    """ERM plus an attribute adversary behind a gradient-reversal layer."""

    USES_ATTRIBUTES = True

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        nonlinear = self.hparams["nonlinear_classifier"]
        self.classifier = networks.Classifier(self.featurizer.n_outputs, num_classes, nonlinear)
        self.adversary_is_attribute = bool(num_attributes)
        self.adversary = networks.Classifier(
            self.featurizer.n_outputs, num_attributes or num_domains, nonlinear)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        params = [*self.featurizer.parameters(), *self.classifier.parameters(),
                  *self.adversary.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=self.hparams["lr"],
                                          weight_decay=self.hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([mb[0] for mb in minibatches])
        y = torch.cat([mb[1] for mb in minibatches])
        a = nuisance_labels(minibatches, self.adversary_is_attribute, "AttributeDANN")
        z = self.featurizer(x)
        loss_label = F.cross_entropy(self.classifier(z), y)
        adv_logits = self.adversary(GradientReversal.apply(z, self.hparams["adv_lambda"]))
        loss_adversary = F.cross_entropy(adv_logits, a)
        loss = loss_label + self.hparams["adv_beta"] * loss_adversary
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        values = torch.stack([loss, loss_label, loss_adversary,
                              (adv_logits.argmax(1) == a).float().mean()]).detach().tolist()
        return dict(zip(["loss", "loss_label", "loss_adversary", "adversary_acc"], values))

    def predict(self, x):
        return self.network(x)
