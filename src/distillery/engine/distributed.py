"""Distributed execution with ``torch.distributed``: one process per device, launched by torchrun.

``torchrun --nproc_per_node N -m distillery.cli run CONFIG`` starts N processes; each calls
:func:`init_from_env`, which joins the process group (NCCL on CUDA, gloo on CPU) when the
``WORLD_SIZE`` environment variable says there is more than one process. The data section's
``batch_size`` is the *global* batch: each rank takes its ``batch_size / world_size`` slice of
the same global batch, so a run's optimizer steps do not depend on the number of processes.

Nothing here is home-made: process groups, collectives, DDP and FSDP are torch.distributed's.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group described by torchrun's environment, if any.

    Returns the device this rank should use (``cuda:<LOCAL_RANK>`` with NCCL) or ``None``
    when not launched by torchrun (a single process). Idempotent.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if not is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shutdown(synchronize: bool = True) -> None:
    """Leave the process group (if this process joined one). Called when a command ends, so
    that torchrun's workers do not tear gloo/NCCL down inside the interpreter's exit, where it
    can abort the process.

    A DistributedDataParallel wrapper keeps the process group alive after it is destroyed
    here, and is then freed during interpreter shutdown, where gloo's threads abort the process
    ("terminate called without an active exception", about 1 run in 3 on this machine). The
    caller must drop its references to such wrappers first; reference cycles among them are
    collected here. With ``synchronize`` (a normal end) every rank first waits at a barrier, so
    that no rank leaves while a peer still has a transfer in flight; after an error the barrier
    is skipped, since the other ranks may never reach it."""
    if not is_initialized():
        return
    if synchronize and world_size() > 1:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def per_rank_batch(global_batch: int, what: str = "data.batch_size") -> int:
    """The per-rank share of a global batch; it must divide evenly."""
    w = world_size()
    if global_batch % w:
        raise ConfigError(f"{what} = {global_batch} is the global batch and must be divisible by the {w} processes.")
    return global_batch // w


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (a no-op in a single process)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ([n, ...], same n on every rank) over ranks along dim 0, in rank
    order (a no-op in a single process). Used so that momentum queues hold every rank's keys."""
    if not is_initialized() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Any) -> Any:
    """Run ``fn()`` on rank 0 and return its result on every rank; an exception raised there
    is raised on every rank (so no process is left waiting at a collective)."""
    if not is_initialized() or world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks for parameters that no DDP wrapper synchronises
    (adapters, trainable objective parameters). One flattened all-reduce."""
    if not is_initialized() or world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean_(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def wrap_student(student: torch.nn.Module, strategy: str, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """Wrap the student for data-parallel training and return the module to call.

    ``ddp``: :class:`~torch.nn.parallel.DistributedDataParallel` around the student.
    ``fsdp``: FSDP2's ``fully_shard`` applied to the student in place (parameters become
    sharded DTensors; it runs on CPU with gloo as well as on GPUs); the student itself is
    returned.
    """
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(student)
    raise ConfigError(f"Unknown distributed strategy {strategy!r}; choose 'ddp' or 'fsdp'.")


def shard_frozen(module: torch.nn.Module, blocks: Iterable[torch.nn.Module] = (),
                 forward_methods: tuple[str, ...] = ()) -> torch.nn.Module:
    """Shard a frozen module (a teacher) over the processes with FSDP2 (``fully_shard``, in
    place; returns ``module``, whose class becomes an ``FSDPModule`` subclass of its own).

    Each rank keeps ``1 / world`` of every parameter (dim-0 chunks, DTensors); a call of
    ``module.forward`` (or of a method named in ``forward_methods``, registered with
    ``register_fsdp_forward_method``) all-gathers them first, so the outputs are those of the
    unsharded weights bit for bit, and frees the gathered copies afterwards
    (``reshard_after_forward=True`` on the root too: FSDP2's default keeps a root gathered
    after its forward, expecting a backward that a frozen teacher under ``no_grad`` never
    runs). Each module of ``blocks`` (e.g. the transformer layers) is sharded as its own group
    first, so at most one block plus the root's own weights are gathered at a time. Every rank
    must call the module equally often (each forward is a collective). It runs on CPU with
    gloo as well as on GPUs (the module must already be on its device)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in blocks:
        if any(True for _ in block.parameters()):
            fully_shard(block, reshard_after_forward=True)
    fully_shard(module, reshard_after_forward=True)
    for name in forward_methods:
        register_fsdp_forward_method(module, name)
    return module


@contextlib.contextmanager
def gradient_sync(wrapper: torch.nn.Module | None, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of a wrapped student on non-final accumulation steps."""
    if wrapper is None or enabled:
        if wrapper is not None and hasattr(wrapper, "set_requires_gradient_sync"):
            wrapper.set_requires_gradient_sync(True)
        yield
        return
    if hasattr(wrapper, "no_sync"):  # DDP
        with wrapper.no_sync():
            yield
        return
    wrapper.set_requires_gradient_sync(False)  # FSDP2
    try:
        yield
    finally:
        wrapper.set_requires_gradient_sync(True)


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all ranks."""
    if not is_initialized() or world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of each scalar over ranks (one all-reduce); unchanged in a single process."""
    if not is_initialized() or world_size() == 1 or not values:
        return values
    flat = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    all_reduce_mean_(flat)
    return dict(zip(values, flat))


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on some rank (a collective: every rank must call it)."""
    if not is_initialized() or world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def device_for_rank(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:<LOCAL_RANK>`` under torchrun."""
    if device.type == "cuda" and is_initialized() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
