"""EX2L formulations: fixed combinations of `ex2l_` hparams, each a registered algorithm.

DomainBed registers variants of one method as algorithms of their own (`CausIRL_CORAL`
beside `CausIRL_MMD`), so one sweep holds them all and each is a row in every table.
A formulation's fixed values are its defaults and stay fixed in its random search; every
hparam can still be overridden with --hparams for an ablation. Why each exists:
docs/lite_study.md.
"""
from __future__ import annotations

from ex2l_domainbed.algorithm import EX2L
from ex2l_domainbed.formulation_values import FORMULATION_VALUES as VALUES


class EX2L_Literal(EX2L):
    """The literal reconstruction of the paper's loss: both maps' weights differentiable, the
    confounder shaping the features, one learning rate (define_ex2l's own values)."""

    FIXED_HPARAMS = VALUES["EX2L_Literal"]


class EX2L_Honest(EX2L):
    """EX2L whose penalty cannot silence the confounder head's map."""

    FIXED_HPARAMS = VALUES["EX2L_Honest"]


class EX2L_Features(EX2L):
    """EX2L whose penalty changes the features only (both maps' channel weights constant)."""

    FIXED_HPARAMS = VALUES["EX2L_Features"]


class EX2L_FeaturesFast(EX2L):
    """The features-only formulation with a confounder head that learns 10x faster (under
    Adam a larger beta cannot speed up a head on detached features; its learning rate can)."""

    FIXED_HPARAMS = VALUES["EX2L_FeaturesFast"]


class EX2L_Conditional(EX2L):
    """The features-only formulation whose confounder predicts the attribute given the class."""

    FIXED_HPARAMS = VALUES["EX2L_Conditional"]


class EX2L_BalancedConfounder(EX2L):
    """EX2L_FeaturesFast whose confounder CE weights every (class, attribute) group alike, so
    it cannot learn the attribute from the class (one-to-one data)."""

    FIXED_HPARAMS = VALUES["EX2L_BalancedConfounder"]


class EX2L_LabelPath(EX2L):
    """EX2L_FeaturesFast with the penalty through the label map only."""

    FIXED_HPARAMS = VALUES["EX2L_LabelPath"]


class EX2L_ConfounderPath(EX2L):
    """EX2L_FeaturesFast with the penalty through the confounder map only."""

    FIXED_HPARAMS = VALUES["EX2L_ConfounderPath"]


FORMULATIONS: dict[str, type[EX2L]] = {
    cls.__name__: cls for cls in (EX2L_Literal, EX2L_Honest, EX2L_Features, EX2L_FeaturesFast,
                                  EX2L_Conditional, EX2L_BalancedConfounder, EX2L_LabelPath,
                                  EX2L_ConfounderPath)}
