"""Group-aware baselines (work in progress)."""
from __future__ import annotations

GROUP_BASELINES: dict[str, type] = {}


def group_baseline_hparams(algorithm: str, dataset: str, define) -> None:
    """Their hparams (an hparams-registry hook)."""
