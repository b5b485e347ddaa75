"""The nuisance label of each training example, for algorithms that predict it.

The dataset's attribute (e.g. the Spawrious location) when the harness passed
`num_attributes` and the minibatches carry it; otherwise the training-environment index,
which is all that upstream DomainBed (or an attribute-free dataset) provides.
"""
from __future__ import annotations

import torch


def nuisance_labels(minibatches: list[tuple], from_attribute: bool, who: str) -> torch.Tensor:
    """Concatenated attribute labels, or environment indices, for `minibatches`."""
    if from_attribute:
        if any(len(mb) < 3 for mb in minibatches):
            raise ValueError(f"{who} was built for a dataset with attributes (num_attributes "
                             "given) but received (x, y) pairs without them.")
        return torch.cat([mb[2] for mb in minibatches])
    return torch.cat([torch.full_like(mb[1], i) for i, mb in enumerate(minibatches)])
