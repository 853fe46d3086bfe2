"""Self-conditioning: a U-Net whose pooled mid-level features condition its own decoder.

W. Xiang, H. Yang, D. Huang, Y. Wang, 2025, "DDAE++: Enhancing Diffusion Models Towards Unified
Generative and Discriminative Learning", arXiv:2505.10999: "self-conditioning ... internally
leverages the rich semantics inherent in denoising network to guide its own decoding layers,
forming a tighter bottleneck ... with 1% computational overhead". The paper aggregates
intermediate features and reroutes them to the decoding layers' conditioning (AdaLN/AdaGN);
its exact aggregation per architecture is not restated here.

:class:`SelfConditionedUNet` (registered as the denoiser ``sc_unet``) is the engine's
:class:`~.networks.UNet` with one extra path. With ``emb = emb(t) [+ emb(class)]`` ``(B, E)``
and the bottleneck activations ``h_mid`` ``(B, F, H/2, H/2)`` (``F = channels[1]``)::

    z = mean_{h, w} h_mid                      (B, F)   the pooled mid-level features
    s = W2 SiLU(W1 z + b1) + b2               (B, E)   W2, b2 zero-initialised
    emb_dec = emb + s                          (B, E)

and every decoder residual block reads ``emb_dec`` instead of ``emb`` (each block projects it to
a per-channel shift of its activations, the additive half of adaptive group normalisation); the
encoder and bottleneck read ``emb`` as before. At initialisation ``s = 0``: the network computes
exactly the plain U-Net's function. ``self_condition=False`` builds the plain U-Net with the same
parameters (the extra path is not created), so the two arms of a comparison share everything
else, initial weights included (the path is created last). [inferred]: pooling the bottleneck
only (not several levels), the two-layer MLP and the additive injection.

:meth:`SelfConditionedUNet.forward_features` returns the prediction and ``z`` from one pass
(what DDAE++'s contrastive self-distillation and a linear probe read); ``features`` (the
engine's GAN-head interface) is ``z`` from the encoder half alone.

:func:`forward_macs` counts the multiply-accumulates of one forward pass (convolutions and
matrix products, by :class:`torch.utils.flop_counter.FlopCounterMode`, FLOPs / 2), which is how
the extra compute of self-conditioning is stated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .denoisers import DENOISERS
from .networks import UNet

__all__ = ["SelfConditionedUNet", "describe_self_conditioning", "forward_macs", "pooled_features"]


@DENOISERS.register("sc_unet")
class SelfConditionedUNet(UNet):
    """The engine's U-Net with DDAE++ self-conditioning (see the module docstring).

    Args (besides :class:`~.networks.UNet`'s ``in_channels``, ``image_size``, ``channels``,
    ``blocks``, ``time_dim``, ``num_classes``):
        self_condition: add the pooled-bottleneck path to the decoder's embedding (``False``:
            the plain U-Net).
        sc_hidden: width of the path's hidden layer (default: the embedding width ``E``).
        sc_detach: stop the decoder's gradient through the path into the encoder (default
            ``False``: the features are trained by the decoder's loss too).

    Shapes: ``x_t`` ``(B, C, H, H)``, ``t`` ``(B,)``, ``cond`` ``(B,)`` or ``None`` ->
    ``(B, C, H, H)``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] | list[int] = (32, 64),
                 blocks: int = 1, time_dim: int | None = None, num_classes: int | None = None,
                 self_condition: bool = True, sc_hidden: int | None = None, sc_detach: bool = False) -> None:
        super().__init__(in_channels, image_size, channels, blocks, time_dim, num_classes)
        if not isinstance(self_condition, bool):
            raise ConfigError(f"sc_unet: self_condition must be true or false, got {self_condition!r}.")
        if not isinstance(sc_detach, bool):
            raise ConfigError(f"sc_unet: sc_detach must be true or false, got {sc_detach!r}.")
        emb_dim = self.time.dim
        hidden = emb_dim if sc_hidden is None else sc_hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"sc_unet: sc_hidden must be a positive integer, got {sc_hidden!r}.")
        self.self_condition, self.sc_detach = self_condition, sc_detach
        self.sc = None
        if self_condition:  # created last: the other weights are initialised as the plain U-Net's
            self.sc = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, emb_dim))
            nn.init.zeros_(self.sc[2].weight)
            nn.init.zeros_(self.sc[2].bias)

    def forward_features(self, x: torch.Tensor, t: torch.Tensor,
                         cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction (B, C, H, H), pooled bottleneck features z (B, channels[1]))`` of one pass."""
        emb = self._embed(x, t, cond)
        skip, h = self._encode(x, emb)
        z = h.mean(dim=(2, 3))
        emb_dec = emb
        if self.sc is not None:
            emb_dec = emb + self.sc(z.detach() if self.sc_detach else z)
        h = self.upsample(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
        h = torch.cat([h, skip], dim=1)
        for block in self.up0:
            h = block(h, emb_dec)
        return self.out(F.silu(self.out_norm(h))), z

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, t, cond)[0]


def pooled_features(net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, F)`` pooled mid-level features of a denoiser network (or of a
    :class:`~.denoisers.Denoiser`, whose ``net`` is read): its ``features(x, t, cond)``."""
    net = getattr(net, "net", net)
    fn = getattr(net, "features", None)
    if fn is None:
        raise ConfigError(f"The network {type(net).__name__} has no features(x_t, t, cond); use a denoiser with pooled "
                          "mid-level features (unet, sc_unet, dit, mlp2d).")
    return fn(x, t, cond)


@torch.no_grad()
def forward_macs(net: nn.Module, sample_shape: tuple[int, ...], *, batch: int = 1, t: float = 0.5,
                 cond: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of one forward pass of ``net(x_t, t, cond)`` per sample: FLOPs
    counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions, linear layers,
    matrix products; normalisations and activations are not counted) halved, divided by
    ``batch``. ``sample_shape``: ``(C, H, W)`` of one sample."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((batch, *sample_shape), device=device)
    times = torch.full((batch,), float(t), device=device)
    was = net.training
    net.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            net(x, times, cond)
    finally:
        net.train(was)
    return int(counter.get_total_flops()) // (2 * batch)


def describe_self_conditioning(net: nn.Module, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """``{"macs": per-sample MACs, "sc_parameters": parameters of the self-conditioning path}``."""
    net = getattr(net, "net", net)
    sc = getattr(net, "sc", None)
    return {"macs": forward_macs(net, sample_shape),
            "sc_parameters": sum(p.numel() for p in sc.parameters()) if sc is not None else 0}
