"""Group-aware baselines: methods that, like EX2L, use the nuisance attribute at training time.

EX2L reads the attribute while it trains, so the fair comparison is with methods that also
know the (label, attribute) groups. Each is its own registered algorithm (its own row in
every table), in the order of `GROUP_BASELINES`:

- `AttributeGroupDRO`: GroupDRO (Sagawa et al. 2020) over the (label, attribute) groups
  (the harness's `GroupDRO` stays the environment version).
- `GroupBalancedERM`: ERM on group-balanced minibatches (Idrissi et al. 2022, resampling);
  its hparams make the harness's loaders sample every group equally (`group_balanced`).
- `GroupReweightedERM`: ERM with each example's loss weighted by 1 / its group's frequency
  (Idrissi et al. 2022, reweighting).
- `JTT`: Just Train Twice (Liu et al. 2021) in one run: an ERM identification model, then a
  final model from the same initialisation with the first model's errors up-weighted.

All take the harness's `num_attributes` and refuse to be built without it: on a dataset
without an attribute there are no groups, and a row labelled with one of these names would
be another method. All keep their state in modules, buffers and optimizers, so runs resume
exactly (`domainbed.lib.resume`).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from domainbed import datasets
from domainbed.algorithms import ERM, split_minibatches
from domainbed.lib import misc
from ex2l_domainbed.nuisance import nuisance_labels

# JTT's identification model is ERM stopped early, before it fits the minority groups (fully
# trained, it misclassifies nothing and its error set is empty). The paper stops it between
# 1/50 of the final model's training (CelebA: 1 of 50 epochs) and 1/5 (Waterbirds: 60 of 300).
JTT_DEFAULT_FRACTION = 0.2
JTT_SEARCH_FRACTIONS = (0.02, 0.05, 0.1, 0.2)


class NeedsAttributesError(misc.UserInputError):
    """A group-aware algorithm built for a dataset that has no attribute (so no groups)."""


class GroupBaselineHparamError(misc.UserInputError):
    """An hparam value that would make a group-aware baseline another method."""


def dataset_steps(dataset: str) -> int:
    """The dataset's default run length (`N_STEPS`), for hparams measured in steps."""
    try:
        return datasets.get_dataset_class(dataset).N_STEPS
    except misc.UnknownNameError:  # hparams of a dataset this process has not registered
        return datasets.MultipleDomainDataset.N_STEPS


def group_baseline_hparams(algorithm: str, dataset: str, define) -> None:
    """Their hparams (an hparams-registry hook); other algorithms' hparams are untouched."""
    if algorithm == "AttributeGroupDRO":
        # As the harness's environment GroupDRO (and Sagawa et al.'s eta = 0.01).
        define("groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1), low=0.0)
    elif algorithm == "GroupBalancedERM":
        define("group_balanced", True, lambda r: True, replace=True)
    elif algorithm == "JTT":
        n_steps = dataset_steps(dataset)
        define("jtt_first_stage_steps", max(1, int(n_steps * JTT_DEFAULT_FRACTION)),
               lambda r: max(1, int(n_steps * r.choice(JTT_SEARCH_FRACTIONS))), low=1)
        define("jtt_upweight", 20.0, lambda r: 10 ** r.uniform(math.log10(5), 2), low=1.0)


class GroupAwareERM(ERM):
    """ERM's networks and optimizer, plus the group index of every training example."""

    USES_ATTRIBUTES = True
    REQUIRES_ATTRIBUTES = True  # meaningless without groups: built only where there are some

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        name = type(self).__name__
        if not num_attributes:
            raise NeedsAttributesError(
                f"{name} needs a dataset with an attribute (groups): pick an attribute-aware "
                "dataset (one with ATTRIBUTES, e.g. DebugAttr28 or a Spawrious one), or run "
                "ERM or GroupDRO on this one.")
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.num_attributes = num_attributes
        self.num_groups = num_classes * num_attributes

    def batch(self, minibatches: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All environments' x and y, and each example's group y * num_attributes + a."""
        x, y = split_minibatches(minibatches)
        a = nuisance_labels(minibatches, True, type(self).__name__)
        return x, y, y * self.num_attributes + a


class AttributeGroupDRO(GroupAwareERM):
    """GroupDRO over (label, attribute) groups (Sagawa et al. 2020, Algorithm 1).

    Per step, the mean loss of each group present in the batch; the group weights `q` (a
    buffer) rise by exponentiated ascent, q_g *= exp(eta * loss_g), for the present groups
    only, then are normalised; the loss is the q-weighted sum over the present groups.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        super().__init__(input_shape, num_classes, num_domains, hparams, num_attributes)
        self.register_buffer("q", torch.full((self.num_groups,), 1.0 / self.num_groups))

    def update(self, minibatches, unlabeled=None):
        x, y, g = self.batch(minibatches)
        losses = F.cross_entropy(self.predict(x), y, reduction="none")
        counts = torch.bincount(g, minlength=self.num_groups)
        group_losses = losses.new_zeros(self.num_groups).index_add(0, g, losses) \
            / counts.clamp(min=1)  # absent groups: 0, so their weight's factor is exp(0)
        self.q *= torch.exp(self.hparams["groupdro_eta"] * group_losses.detach())
        self.q /= self.q.sum()
        loss = torch.dot(self.q, group_losses)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        worst = group_losses[counts > 0].max()
        return {"loss": loss.item(), "worst_group_loss": worst.item()}


class GroupBalancedERM(GroupAwareERM):
    """ERM on group-balanced minibatches (Idrissi et al. 2022, resampling).

    The algorithm is ERM; its hparam `group_balanced` (true) makes the harness's training
    loaders draw every (label, attribute) group equally often.
    """

    @staticmethod
    def check_hparams(hparams: dict[str, Any]) -> None:
        """Without group-balanced sampling it would be plain ERM under another name."""
        if not hparams.get("group_balanced", True):
            raise GroupBaselineHparamError(
                "GroupBalancedERM is ERM on group-balanced batches; group_balanced=false would "
                "make it plain ERM: drop that hparam, or run ERM.")


class GroupReweightedERM(GroupAwareERM):
    """ERM with each example's loss weighted by 1 / its group's frequency (Idrissi et al. 2022,
    reweighting), the weights normalised to mean 1 over the batch.

    The algorithm never sees the whole training set, so the frequencies are running counts
    (a buffer) of the groups in every batch it has trained on, updated before weighting: the
    estimate converges to the group frequencies of the training stream (the training data's,
    pooled over environments as the harness samples them). A group is never weighted by a
    zero count, since the current batch is counted first.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        super().__init__(input_shape, num_classes, num_domains, hparams, num_attributes)
        self.register_buffer("group_counts", torch.zeros(self.num_groups, dtype=torch.long))

    def update(self, minibatches, unlabeled=None):
        x, y, g = self.batch(minibatches)
        self.group_counts += torch.bincount(g, minlength=self.num_groups)
        weights = 1.0 / self.group_counts[g].float()
        weights = weights / weights.mean()
        losses = F.cross_entropy(self.predict(x), y, reduction="none")
        loss = (weights * losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "unweighted_loss": losses.mean().item()}


class JTT(GroupAwareERM):
    """Just Train Twice (Liu et al. 2021) in one run of the training loop.

    Stage 1 (the first `jtt_first_stage_steps` updates) trains an identification model, the
    `identifier`, with ERM and its own optimizer. Then it is frozen (eval mode, no gradients)
    and stage 2 trains the final model (`network`, ERM's attributes), which starts from the
    same initial weights, on the stream with the examples the identifier misclassifies
    weighted by `jtt_upweight` (loss weights normalised by their sum: in expectation as
    upsampling the error set). The error set is judged on the batch as loaded, so with
    random augmentation on the augmented image. `predict` uses the identifier until stage 2
    has made its first update, so logged accuracies describe the model being trained.

    JTT itself needs groups only to select its hparams (worst-group validation accuracy);
    it still requires an attribute-aware dataset, as its comparison with EX2L is about them.
    It holds two copies of the network.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams,
                 num_attributes: Optional[int] = None):
        super().__init__(input_shape, num_classes, num_domains, hparams, num_attributes)
        self.identifier = copy.deepcopy(self.network)  # the same initialisation
        self.identifier_optimizer = torch.optim.Adam(
            self.identifier.parameters(), lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"])
        self.register_buffer("update_count", torch.tensor(0))

    def in_first_stage(self) -> bool:
        return int(self.update_count) < self.hparams["jtt_first_stage_steps"]

    def train(self, mode: bool = True) -> "JTT":
        """The identifier stays in eval mode once frozen (the harness toggles train/eval)."""
        super().train(mode)
        if not self.in_first_stage():
            self.identifier.eval()
        return self

    def update(self, minibatches, unlabeled=None):
        x, y = split_minibatches(minibatches)
        if self.in_first_stage():
            loss = F.cross_entropy(self.identifier(x), y)
            optimizer, stage, error_fraction = self.identifier_optimizer, 1.0, 0.0
        else:
            self.identifier.eval()
            with torch.no_grad():
                wrong = (self.identifier(x).argmax(1) != y).float()
            weights = 1.0 + (self.hparams["jtt_upweight"] - 1.0) * wrong
            losses = F.cross_entropy(self.network(x), y, reduction="none")
            loss = torch.dot(weights, losses) / weights.sum()
            optimizer, stage, error_fraction = self.optimizer, 2.0, wrong.mean().item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "jtt_stage": stage, "error_set_fraction": error_fraction}

    def predict(self, x):
        if int(self.update_count) <= self.hparams["jtt_first_stage_steps"]:
            return self.identifier(x)
        return self.network(x)


GROUP_BASELINES: dict[str, type] = {
    "AttributeGroupDRO": AttributeGroupDRO,
    "GroupBalancedERM": GroupBalancedERM,
    "GroupReweightedERM": GroupReweightedERM,
    "JTT": JTT,
}
