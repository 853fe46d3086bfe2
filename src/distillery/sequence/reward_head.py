"""A lightweight reward model on a causal LM's hidden states, distilled from self-evaluation labels.

PSRD (Zhang et al., 2026, "Mitigating Multimodal Hallucination via Phase-wise Self-reward",
arXiv:2604.17982) avoids the cost of the LVLM evaluating its own phases during decoding by
distilling that signal "into a lightweight reward model". Here the reward model is a small MLP
on the LM's last-layer hidden state at the last token of a phase (``LMOutput.hidden``, after
the final layer norm), so scoring a candidate phase costs no extra LM forward pass:

    r(h) = w_2^T GELU(W_1 h + b_1) + b_2            (a logit; sigmoid(r) = P(phase is faithful))

trained with binary cross-entropy toward the self-evaluation labels ``y`` in [0, 1] (hard or
soft), each phase weighted equally::

    L = -mean_i [ y_i log sigmoid(r_i) + (1 - y_i) log(1 - sigmoid(r_i)) ]

The architecture (one hidden layer) and the BCE are [inferred]: the abstract says only
"lightweight reward model".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError

__all__ = ["RewardHead", "fit_reward_head", "reward_head_loss"]


class RewardHead(nn.Module):
    """``RewardHead(dim, hidden)``: hidden states ``(..., dim)`` -> reward logits ``(...)``."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"RewardHead: {name} must be a positive integer, got {v!r}.")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.shape[-1] != self.fc1.in_features:
            raise ShapeError(f"RewardHead: hidden states must end in {self.fc1.in_features}, got {list(hidden.shape)}.")
        return self.fc2(F.gelu(self.fc1(hidden.to(self.fc1.weight.dtype))))[..., 0]


def reward_head_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of reward logits ``(M,)`` toward labels ``(M,)`` in [0, 1]."""
    if logits.shape != targets.shape:
        raise ShapeError(f"reward_head_loss: logits {list(logits.shape)} and targets {list(targets.shape)} differ.")
    if targets.numel() and (float(targets.min()) < 0.0 or float(targets.max()) > 1.0):
        raise ShapeError("reward_head_loss: targets must lie in [0, 1].")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def fit_reward_head(features: Tensor, targets: Tensor, *, hidden: int = 64, steps: int = 400, batch_size: int = 256,
                    lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> RewardHead:
    """Fit a :class:`RewardHead` on ``features (M, H)`` (detached hidden states) and labels
    ``targets (M,)`` with AdamW, ``steps`` minibatches drawn with replacement (seeded)."""
    if features.ndim != 2 or targets.shape != features.shape[:1]:
        raise ShapeError(f"fit_reward_head: features (M, H) and targets (M,), got {list(features.shape)} and "
                         f"{list(targets.shape)}.")
    if features.shape[0] == 0:
        raise ConfigError("fit_reward_head: no labelled phases to fit on.")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RewardHead(int(features.shape[1]), hidden)
    x, y = features.detach().float(), targets.detach().float()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        loss = reward_head_loss(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()
