"""What a Grad-CAM map differentiates: the target's raw logit or its log-softmax.

Both are expressed as a cotangent `t` on the logits (the score's gradient w.r.t. the
logits), so every backend computes channel weights as `J(p)^T t / (h*w)`:

- `logit`:        t = one_hot(y). Adding one vector to every row of a linear head
                  leaves the softmax unchanged but shifts every map; a penalty can
                  use that to drive maps negative (ReLU then zeroes them) for free.
- `log_softmax`:  t = one_hot(y) - softmax(logits). Shift-invariant: the weights are
                  W[y] - sum_k p_k W[k], so a common shift of the rows cancels. `t`
                  stays differentiable, as in exact double-backprop Grad-CAM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCORES = ("log_softmax", "logit")


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"Unknown Grad-CAM score {score!r}; choose one of {', '.join(SCORES)}.")


def score_values(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """The per-sample score `[B]` whose gradient Grad-CAM takes."""
    check_score(score)
    if score == "logit":
        return logits.gather(1, targets[:, None])[:, 0]
    return F.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]


def score_cotangent(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """d score / d logits, `[B, C]`, differentiable where the score is nonlinear."""
    check_score(score)
    # scatter, not F.one_hot: one_hot validates the labels, which syncs a GPU every step
    one_hot = torch.zeros_like(logits, requires_grad=False).scatter_(1, targets[:, None], 1.0)
    if score == "logit":
        return one_hot
    return one_hot - torch.softmax(logits, dim=1)
