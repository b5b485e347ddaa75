"""The `ex2l_` values each EX2L formulation fixes, and the one `EX2L` itself runs.

One table, so that `EX2L`'s default and the registered formulations (`formulations`) cannot
drift apart: the default is an entry of this table, chosen by the search of
`sweeps/lite_default.toml` (docs/lite_study.md, "Choosing the default"). Keys absent from an
entry keep `algorithm.define_ex2l`'s values, which are the literal reconstruction's.
"""
from __future__ import annotations

from typing import Any

# The confounder is honest: its map's weights are constants inside the penalty, so the
# penalty cannot make the confounder head anti-predictive to silence its map.
HONEST = {"ex2l_detach_confounder": True}
# ... and it reads the features without shaping them (no confounder gradient into them), and
# the label map's weights are constants too: the penalty can change the features only.
FEATURES = {**HONEST, "ex2l_confounder_grad": False, "ex2l_detach_label": True}
FEATURES_FAST = {**FEATURES, "ex2l_confounder_lr_mult": 10.0}

FORMULATION_VALUES: dict[str, dict[str, Any]] = {
    "EX2L_Literal": {},
    "EX2L_Honest": HONEST,
    "EX2L_Features": FEATURES,
    "EX2L_FeaturesFast": FEATURES_FAST,
    "EX2L_Conditional": {**FEATURES, "ex2l_conditional_confounder": True},
    "EX2L_BalancedConfounder": {**FEATURES_FAST, "ex2l_confounder_balanced": True},
    # The path ablation (sweeps/lite_ablation.toml): the penalty through one map only.
    "EX2L_LabelPath": {**FEATURES_FAST, "ex2l_penalty_path": "label"},
    "EX2L_ConfounderPath": {**FEATURES_FAST, "ex2l_penalty_path": "confounder"},
}

# What `--algorithms EX2L` runs with no --hparams.
DEFAULT_FORMULATION = "EX2L_Conditional"
