"""EX2L formulations: fixed combinations of `ex2l_` hparams, each a registered algorithm.

DomainBed registers variants of one method as algorithms of their own (`CausIRL_CORAL`
beside `CausIRL_MMD`), so one sweep holds them all and each is a row in every table.
A formulation's fixed values are its defaults and stay fixed in its random search; every
hparam can still be overridden with --hparams for an ablation. Why each exists:
docs/lite_study.md.
"""
from __future__ import annotations

from ex2l_domainbed.algorithm import EX2L

# The confounder is honest: its map's weights are constants inside the penalty, so the
# penalty cannot make the confounder head anti-predictive to silence its map.
HONEST = {"ex2l_detach_confounder": True}
# ... and it reads the features without shaping them (no confounder gradient into them), and
# the label map's weights are constants too: the penalty can change the features only.
FEATURES = {**HONEST, "ex2l_confounder_grad": False, "ex2l_detach_label": True}


class EX2L_Literal(EX2L):
    """The literal reconstruction of the paper's loss: both maps' weights differentiable, the
    confounder shaping the features, one learning rate (define_ex2l's own values)."""

    FIXED_HPARAMS: dict = {}


class EX2L_Honest(EX2L):
    """EX2L whose penalty cannot silence the confounder head's map."""

    FIXED_HPARAMS = HONEST


class EX2L_Features(EX2L):
    """EX2L whose penalty changes the features only (both maps' channel weights constant)."""

    FIXED_HPARAMS = FEATURES


class EX2L_FeaturesFast(EX2L):
    """The features-only formulation with a confounder head that learns 10x faster (under
    Adam a larger beta cannot speed up a head on detached features; its learning rate can)."""

    FIXED_HPARAMS = {**FEATURES, "ex2l_confounder_lr_mult": 10.0}


class EX2L_Conditional(EX2L):
    """The features-only formulation whose confounder predicts the attribute given the class."""

    FIXED_HPARAMS = {**FEATURES, "ex2l_conditional_confounder": True}


class EX2L_BalancedConfounder(EX2L):
    """EX2L_FeaturesFast whose confounder CE weights every (class, attribute) group alike, so
    it cannot learn the attribute from the class (one-to-one data)."""

    FIXED_HPARAMS = {**EX2L_FeaturesFast.FIXED_HPARAMS, "ex2l_confounder_balanced": True}


# The path ablation (sweeps/lite_ablation.toml): the recommended formulation with its
# penalty reaching the features through one map, the other held constant in the overlap.
class EX2L_LabelPath(EX2L):
    """EX2L_FeaturesFast with the penalty through the label map only."""

    FIXED_HPARAMS = {**EX2L_FeaturesFast.FIXED_HPARAMS, "ex2l_penalty_path": "label"}


class EX2L_ConfounderPath(EX2L):
    """EX2L_FeaturesFast with the penalty through the confounder map only."""

    FIXED_HPARAMS = {**EX2L_FeaturesFast.FIXED_HPARAMS, "ex2l_penalty_path": "confounder"}


FORMULATIONS: dict[str, type[EX2L]] = {
    cls.__name__: cls for cls in (EX2L_Literal, EX2L_Honest, EX2L_Features, EX2L_FeaturesFast, EX2L_Conditional,
                                  EX2L_BalancedConfounder, EX2L_LabelPath, EX2L_ConfounderPath)}
