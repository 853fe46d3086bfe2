"""Reconstruction-guided block weighting (Momentum-GS, Fan et al. 2024, arXiv:2412.04887)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..registry import WEIGHTINGS


@WEIGHTINGS.register("block_accuracy")
class BlockAccuracyWeight:
    """Per-block loss weights from each block's reconstruction accuracy (Momentum-GS).

    Fan et al. 2024, "Momentum-GS: Momentum Gaussian Self-Distillation for High-Quality Large
    Scene Reconstruction", arXiv:2412.04887: "block weighting, dynamically adjusting each
    block's weight according to its reconstruction accuracy", so that blocks lagging behind the
    best one get more weight. Here the accuracy of block ``k`` is a running PSNR ``q_k`` (dB),
    updated whenever the block is measured: ``q_k <- psnr`` the first time, then ``q_k <- m q_k +
    (1 - m) psnr``. The weight is

        w_k = 2 - exp(-(max_j q_j - q_k)^2 / (2 sigma^2))

    1 for the most accurate block, rising toward 2 for blocks far below it (``sigma`` in dB);
    blocks never measured weigh 1. (A Gaussian of the deviation from the best block, as the
    paper's weighting; the paper also uses SSIM, left out here.)

    Example::

        >>> w = BlockAccuracyWeight(num_blocks=3, sigma=1.0, momentum=0.0)
        >>> w.update(0, 30.0); w.update(1, 29.0)
        >>> [round(v, 4) for v in w.weights().tolist()]
        [1.0, 1.3935, 1.0]
    """

    def __init__(self, num_blocks: int, sigma: float = 1.0, momentum: float = 0.9) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ConfigError(f"block_accuracy: num_blocks must be a positive int, got {num_blocks!r}.")
        if not float(sigma) > 0:
            raise ConfigError(f"block_accuracy: sigma must be > 0 (dB), got {sigma!r}.")
        if not 0.0 <= float(momentum) < 1.0:
            raise ConfigError(f"block_accuracy: momentum must be in [0, 1), got {momentum!r}.")
        self.num_blocks, self.sigma, self.momentum = num_blocks, float(sigma), float(momentum)
        self.psnr = torch.full((num_blocks,), float("nan"), dtype=torch.float64)

    def _check(self, block: int) -> int:
        if not 0 <= int(block) < self.num_blocks:
            raise ConfigError(f"block_accuracy: block {block} is out of range 0..{self.num_blocks - 1}.")
        return int(block)

    def update(self, block: int, psnr: float) -> None:
        """Record a new PSNR (dB) measured on ``block``."""
        k = self._check(block)
        old = float(self.psnr[k])
        self.psnr[k] = float(psnr) if math.isnan(old) else self.momentum * old + (1 - self.momentum) * float(psnr)

    def update_mse(self, block: int, mse: float, data_range: float = 1.0) -> None:
        """Record a mean squared error: ``psnr = 10 log10(data_range^2 / mse)``."""
        self.update(block, 10 * math.log10(data_range**2 / max(float(mse), 1e-12)))

    def weights(self) -> torch.Tensor:
        """``[num_blocks]`` weights ``w_k`` (float64)."""
        known = ~torch.isnan(self.psnr)
        if not bool(known.any()):
            return torch.ones(self.num_blocks, dtype=torch.float64)
        gap = self.psnr[known].max() - self.psnr
        w = 2 - torch.exp(-gap**2 / (2 * self.sigma**2))
        return torch.where(known, w, torch.ones_like(w))

    def __call__(self, block: int) -> float:
        """The weight of one block."""
        return float(self.weights()[self._check(block)])

    def state_dict(self) -> dict[str, list[float]]:
        return {"psnr": self.psnr.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.psnr = torch.tensor(state["psnr"], dtype=torch.float64)
