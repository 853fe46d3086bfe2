"""Sharpness: the dominant eigenvalue of a loss Hessian, by power iteration on Hessian-vector products.

The Hessian is never formed: ``H v = d/dtheta <grad L(theta), v>`` (Pearlmutter 1994,
"Fast Exact Multiplication by the Hessian", Neural Computation 6(1)) costs one extra
backward pass. Power iteration ``v <- H v / ||H v||`` converges to the eigenvector of the
eigenvalue of largest magnitude; its Rayleigh quotient ``v^T H v`` is returned. This is the
sharpness measure of DARTS analyses, ``lambda_max`` of ``nabla^2_alpha L_val`` (Zela et al.
2020, "Understanding and Robustifying Differentiable Architecture Search", arXiv:1909.09656;
SD-DARTS, arXiv:2302.05629).

Example::

    >>> a = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    >>> theta = torch.zeros(2, requires_grad=True)
    >>> lam, _ = top_hessian_eigenvalue(lambda: 0.5 * theta @ a @ theta, [theta], iters=100)
    >>> round(lam, 4)  # (5 + sqrt(5)) / 2
    3.618
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError

__all__ = ["hessian_vector_product", "top_hessian_eigenvalue"]


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ConfigError("sharpness: give a non-empty list of tensors that require gradients.")
    return params


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if loss.ndim != 0:
        raise ConfigError(f"sharpness: the loss must be a scalar, got shape {list(loss.shape)}.")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def _hvp(grads: Sequence[torch.Tensor], params: list[torch.Tensor], vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    if not dot.requires_grad:  # the loss is linear in params: the Hessian is zero
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]


def hessian_vector_product(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], vector: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``H v`` for the Hessian of ``loss_fn()`` (a scalar) w.r.t. ``params``.

    ``params``: tensors requiring gradients; ``vector``: tensors of the same shapes. Returns
    a list shaped like ``params``.
    """
    params = _check_params(params)
    vector = list(vector)
    if len(vector) != len(params) or any(v.shape != p.shape for v, p in zip(vector, params)):
        raise ConfigError("hessian_vector_product: vector must match params tensor by tensor.")
    return _hvp(_grads(loss_fn(), params), params, vector)


def top_hessian_eigenvalue(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    iters: int = 20,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> tuple[float, list[torch.Tensor]]:
    """Dominant eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``, by power iteration.

    ``loss_fn`` is called once (its graph is reused for every ``H v``). Starts from a random
    unit vector (from ``generator``), stops after ``iters`` iterations or when the Rayleigh
    quotient changes by less than ``tol`` relative to its size. Returns
    ``(lambda, eigenvector)``, the eigenvector a list shaped like ``params`` with unit norm
    overall. ``lambda`` is the eigenvalue of largest magnitude (the top one when the Hessian
    is positive semi-definite, as near a minimum).
    """
    params = _check_params(params)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"top_hessian_eigenvalue: iters must be a positive int, got {iters!r}.")
    grads = _grads(loss_fn(), params)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    eigenvalue = 0.0
    for i in range(iters):
        hv = _hvp(grads, params, v)
        new = float(sum((h * x).sum() for h, x in zip(hv, v)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if float(norm) == 0.0:
            return 0.0, v
        v = [h / norm for h in hv]
        converged = i > 0 and abs(new - eigenvalue) <= tol * max(abs(new), 1e-12)
        eigenvalue = new
        if converged:
            break
    return eigenvalue, v
