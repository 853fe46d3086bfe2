"""Masked autoencoder (MAE) around the reference ViT: patch masking, encoder on visible tokens, decoder.

He, Chen, Xie, Li, Dollar, Girshick 2022, "Masked Autoencoders Are Scalable Vision
Learners" (CVPR), arXiv:2111.06377: a random subset of patches is removed, the encoder
sees only the visible ones (plus the class token), a light decoder gets the encoded visible
tokens back in place, a shared learned *mask token* in every removed position and its own
position embeddings, and predicts the content of every patch; the loss is the mean squared
error on the removed patches only (:class:`~distillery.objectives.MaskedReconstruction`).

:class:`MaskedAutoencoder` wraps an existing :class:`~distillery.models.ViT` (1D or 2D), so
the weights of ``encoder`` are exactly those of a ``vit`` with the same parameters (see
:func:`encoder_state_dict`): pre-train the wrapper, fine-tune the ViT. The mask is drawn by
:class:`~distillery.data.views.PatchMask` (``sample(x) -> (x_masked, mask)``), whose patch
numbering is the ViT's token order.

Outputs of ``forward(x)`` (a dict, so each item is a signal ``student.<key>``):

* ``logits`` ``[B, num_classes]``: the ViT head on the class token of the *unmasked* input;
* ``hidden`` ``[B, 1 + N, dim]``: the encoder's final (normalised) tokens of the unmasked input;
* in training mode with ``mask_ratio > 0`` also ``reconstruction`` ``[B, N, P]`` (the
  decoder's prediction of every patch, ``P = C * prod(patch)``), ``patches`` ``[B, N, P]``
  (the target: the input cut into patches by :func:`patchify`) and ``mask`` ``[B, N]``
  (float, 1 = removed).

In eval mode the wrapper is the plain encoder (no masking, no decoder): a frozen MAE teacher
returns only ``logits`` and ``hidden``. With ``hidden_in_training=False`` the unmasked pass is
skipped in training mode (no ``logits``/``hidden`` there), which halves the cost of plain MAE
training; it changes no weights. The masked pass runs before the unmasked one, so a
forward hook on an encoder module (``student.encoder.blocks.1``) captures the unmasked pass.

Shared masks (DMAE, Bai et al. 2023, arXiv:2208.12256): a student built with
``share_mask=True`` (and ``hidden_in_training=False``, so that taps on its encoder blocks see
the visible tokens) records the mask of each training forward as ``last_mask`` (bool
``[B, N]``). Given to a :class:`~distillery.FrozenTeacher` whose model is another
``mae_vit``, it makes that teacher follow its masks (:meth:`MaskedAutoencoder.init_from_teacher`):
in eval mode the teacher then encodes only the patches the student saw, returning ``hidden``
``[B, 1 + n_visible, dim]``, and a teacher ``until="encoder.blocks.k"`` runs only its first
``k + 1`` blocks on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..data.views import PatchMask
from ..errors import ConfigError, ShapeError
from ..registry import MODELS
from .reference import ViT, channels_first, vit
from .transformer import TransformerBlock

__all__ = ["MaskedAutoencoder", "encoder_state_dict", "mae_vit", "patchify"]


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """Cut a batch into non-overlapping patches in the ViT's token order.

    ``x``: ``[B, C, L]`` with ``patch = (p,)`` -> ``[B, L // p, C * p]``; ``[B, C, H, W]`` with
    ``patch = (ph, pw)`` -> ``[B, (H // ph) * (W // pw), C * ph * pw]`` (patches row-major,
    each flattened channel-major). The sizes must divide exactly.
    """
    patch = tuple(int(p) for p in patch)
    if x.ndim == 3 and len(patch) == 1:
        b, c, length = x.shape
        (p,) = patch
        if length % p:
            raise ShapeError(f"patchify: length {length} is not divisible by the patch size {p}.")
        return x.reshape(b, c, length // p, p).permute(0, 2, 1, 3).reshape(b, length // p, c * p)
    if x.ndim == 4 and len(patch) == 2:
        b, c, h, w = x.shape
        ph, pw = patch
        if h % ph or w % pw:
            raise ShapeError(f"patchify: image {h}x{w} is not divisible by the patch size {ph}x{pw}.")
        gh, gw = h // ph, w // pw
        return x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
    raise ShapeError(f"patchify: expected [B, C, L] with a 1D patch or [B, C, H, W] with a 2D patch; got {list(x.shape)} and patch {patch}.")


class MaskedAutoencoder(nn.Module):
    """MAE (He et al. 2022, arXiv:2111.06377) around a :class:`ViT` encoder.

    Args:
        encoder: the ViT whose tokens are encoded (its ``head`` gives ``logits``).
        mask_ratio: fraction of patches removed per sample (``round(ratio * N)``, as
            :class:`PatchMask`); ``0`` disables the masked pass.
        decoder_dim, decoder_depth, decoder_heads, mlp_ratio: the decoder's width, number of
            :class:`TransformerBlock` s, heads and MLP ratio.
        hidden_in_training: also encode the unmasked input in training mode (``logits``,
            ``hidden``; needed by a hidden-state distillation term).
        share_mask: make a frozen ``mae_vit`` teacher encode only the patches this model left
            visible in the same step (DMAE); needs ``hidden_in_training=False``.

    Modules: ``encoder`` (the ViT: ``encoder.patch_embed``, ``encoder.blocks.i``,
    ``encoder.norm``, ``encoder.head``), ``decoder_embed`` (Linear dim -> decoder_dim),
    ``decoder_blocks.i``, ``decoder_norm``, ``decoder_pred`` (Linear decoder_dim -> P);
    parameters ``mask_token`` ``[1, 1, decoder_dim]`` and ``decoder_pos`` ``[1, 1 + N, decoder_dim]``.

    Example:
        >>> m = mae_vit((40,), 10, patch_size=4, dim=16, depth=1, heads=2)
        >>> out = m(torch.randn(3, 40))
        >>> out["reconstruction"].shape, out["mask"].sum(1).tolist()
        (torch.Size([3, 10, 4]), [8.0, 8.0, 8.0])
    """

    def __init__(
        self,
        encoder: ViT,
        mask_ratio: float = 0.75,
        decoder_dim: int = 32,
        decoder_depth: int = 1,
        decoder_heads: int = 2,
        mlp_ratio: float = 2.0,
        hidden_in_training: bool = True,
        share_mask: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, ViT):
            raise ConfigError(f"MaskedAutoencoder wraps a distillery ViT, got {type(encoder).__name__}.")
        self.encoder = encoder
        self.patch = tuple(int(k) for k in encoder.patch_embed.proj.kernel_size)
        cin = encoder.patch_embed.proj.in_channels
        dim = encoder.pos_embed.shape[-1]
        self.num_patches = encoder.num_patches
        self.patch_dim = cin * math.prod(self.patch)
        self.masker = PatchMask(self.patch[0] if len(self.patch) == 1 else self.patch, mask_ratio)
        self.mask_ratio = float(mask_ratio)
        self.hidden_in_training = bool(hidden_in_training)
        if share_mask and self.hidden_in_training:
            raise ConfigError(
                "mae_vit: share_mask=true needs hidden_in_training=false (taps on the encoder blocks must "
                "capture the masked pass that the teacher follows)."
            )
        self.share_mask = bool(share_mask)
        self.last_mask: torch.Tensor | None = None  # bool [B, N] of the last masked forward
        self._mask_source: list[MaskedAutoencoder] = []  # a student whose masks this model follows
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.decoder_blocks = nn.ModuleList(TransformerBlock(decoder_dim, decoder_heads, mlp_ratio, 0.0) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_dim)

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        return channels_first(x, self.encoder.dims, self.encoder.add_channel, "mae_vit", error=ShapeError)

    def encode_visible(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the class token and the visible patches only.

        ``x``: channels-first input ``[B, C, L]`` / ``[B, C, H, W]``; ``mask`` bool
        ``[B, N]`` (True = removed) with the same count in every row. Returns the encoded
        sequence ``[B, 1 + n_visible, dim]`` and the visible patch indices ``[B, n_visible]``
        (increasing).
        """
        enc = self.encoder
        counts = mask.sum(1)
        if bool((counts != counts[0]).any()):
            raise ShapeError("MaskedAutoencoder: every sample must have the same number of removed patches.")
        n_visible = self.num_patches - int(counts[0])
        # stable sort puts visible (False) patches first, in their original order
        visible = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices[:, :n_visible]
        tokens = enc.patch_tokens(x)  # [B, N, dim]
        tokens = torch.gather(tokens, 1, visible[..., None].expand(-1, -1, tokens.shape[-1]))
        return enc.encode_patches(tokens), visible

    def decode(self, encoded: torch.Tensor, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict every patch ``[B, N, P]`` from the encoded visible tokens (mask tokens elsewhere)."""
        d = self.decoder_embed(encoded)  # [B, 1 + n_visible, Dd]
        b, _, dd = d.shape
        placed = d.new_zeros(b, self.num_patches, dd).scatter(1, visible[..., None].expand(-1, -1, dd), d[:, 1:])
        full = torch.where(mask[..., None], self.mask_token.expand(b, self.num_patches, dd), placed)
        seq = torch.cat([d[:, :1], full], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            seq = block(seq)
        return self.decoder_pred(self.decoder_norm(seq))[:, 1:]

    def init_from_teacher(self, model: nn.Module) -> None:
        """With ``share_mask``, make the frozen teacher ``model`` (an ``mae_vit``) follow this
        model's masks; called once by :class:`~distillery.FrozenTeacher` (no-op otherwise)."""
        if not self.share_mask:
            return
        if not isinstance(model, MaskedAutoencoder):
            raise ConfigError(
                f"mae_vit share_mask=true needs a frozen teacher that is an mae_vit (it encodes the student's "
                f"visible patches), got {type(model).__name__}."
            )
        if model.num_patches != self.num_patches:
            raise ShapeError(
                f"mae_vit share_mask: the teacher cuts the input into {model.num_patches} patches and the student "
                f"into {self.num_patches}; use the same patch_size."
            )
        model.follow_mask_of(self)

    def follow_mask_of(self, student: MaskedAutoencoder | None) -> None:
        """In eval mode, encode only the patches ``student`` left visible in its last training
        forward (``None`` stops following)."""
        self._mask_source = [student] if student is not None else []

    def _followed_mask(self, batch_size: int) -> torch.Tensor | None:
        if self.training or not self._mask_source:
            return None
        mask = self._mask_source[0].last_mask
        if mask is None:
            return None
        if mask.shape != (batch_size, self.num_patches):
            raise ShapeError(
                f"mae_vit: the student's last mask has shape {list(mask.shape)} but this batch needs "
                f"[{batch_size}, {self.num_patches}]; a teacher following the student's masks must run right "
                "after the student on the same batch (do not precompute it)."
            )
        return mask

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        followed = self._followed_mask(x.shape[0])
        if followed is not None:  # a DMAE teacher: only the student's visible patches, no logits
            encoded, _ = self.encode_visible(self._channels_first(x), followed)
            return {"hidden": encoded}
        self.last_mask = None
        if self.training and self.mask_ratio > 0:
            xc = self._channels_first(x)
            _, mask = self.masker.sample(xc)
            if self.share_mask:
                self.last_mask = mask.detach()
            encoded, visible = self.encode_visible(xc, mask)
            out["reconstruction"] = self.decode(encoded, visible, mask)
            out["patches"] = patchify(xc, self.patch)
            out["mask"] = mask.to(out["reconstruction"].dtype)
            if not self.hidden_in_training:
                return out
        hidden = self.encoder.tokens(x)
        out["logits"] = self.encoder.head(hidden[:, 0])
        out["hidden"] = hidden
        return out


def encoder_state_dict(model: MaskedAutoencoder | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` weights of an MAE (a module or its state dict), without the prefix:
    loadable into a ``vit`` built with the same parameters."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not out:
        raise ConfigError("encoder_state_dict: no 'encoder.*' weights found; is this a mae_vit checkpoint?")
    return out


@MODELS.register("mae_vit")
def mae_vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    mask_ratio: float = 0.75,
    decoder_dim: int = 32,
    decoder_depth: int = 1,
    decoder_heads: int = 2,
    hidden_in_training: bool = True,
    share_mask: bool = False,
) -> MaskedAutoencoder:
    """Masked autoencoder (He et al. 2022) around a ``vit`` with the same first parameters.

    Outputs ``logits``, ``hidden`` and, when training, ``reconstruction``, ``patches`` and
    ``mask`` (see :class:`MaskedAutoencoder`; ``hidden_in_training=False`` skips the unmasked
    pass while training, for plain MAE; ``share_mask`` makes a frozen ``mae_vit`` teacher follow
    this model's masks, for DMAE). The encoder's weights load into
    ``vit(input_shape, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout)``.
    """
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 <= float(mask_ratio) < 1.0:
        raise ConfigError(f"mae_vit: mask_ratio must be in [0, 1), got {mask_ratio!r}.")
    for name, v in (("decoder_dim", decoder_dim), ("decoder_depth", decoder_depth), ("decoder_heads", decoder_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"mae_vit: {name} must be a positive int, got {v!r}.")
    if decoder_dim % decoder_heads:
        raise ConfigError(f"mae_vit: decoder_dim ({decoder_dim}) must be divisible by decoder_heads ({decoder_heads}).")
    encoder = vit(input_shape, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout)
    return MaskedAutoencoder(encoder, float(mask_ratio), decoder_dim, decoder_depth, decoder_heads, float(mlp_ratio),
                             bool(hidden_in_training), bool(share_mask))
