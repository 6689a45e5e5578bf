"""Multi-process (DDP) support for training launched by ``torchrun``.

Every helper is a no-op in a single process, so the training loop has one code path. Under ``torchrun``
(``WORLD_SIZE`` > 1) the process group uses NCCL on CUDA and gloo on CPU, each rank draws its own share of
every global batch (see :class:`.batch_sources.IterationBatches`), and only rank 0 writes checkpoints, logs and the model.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

RANK_DIGEST_ENV = "MEDSYNTH_RANK_DIGEST_DIR"


@dataclass
class DistContext:
    """Where this process sits in the job: rank, world size, and the device it owns."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group when launched by torchrun; otherwise return a single-process context.

    On CUDA each rank takes GPU ``LOCAL_RANK`` (the device passed in only says "cuda"), which is what torchrun
    expects; the backend is NCCL there and gloo on CPU.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns = False
    if not dist.is_initialized():
        kwargs = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        owns = True
        collect_at_exit()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend, owns_group=owns)


def _collect() -> None:
    """At exit, while the interpreter is whole: let go of an uncaught error's traceback (whose frames hold a stage's
    DDP wrappers) and collect what it held, so the group does not go in the shutdown."""
    for name in ("last_traceback", "last_value", "last_exc", "last_type"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    gc.collect()


def collect_at_exit() -> None:
    """Register the exit collection once per process, however many groups it opens."""
    atexit.unregister(_collect)
    atexit.register(_collect)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if this module created it.

    A finished stage's DDP wrappers sit in reference cycles, and their reducers hold the group: collected first, while
    the interpreter is whole, the group goes with them here rather than in the interpreter's shutdown, where gloo's
    threads can abort the process ("terminate called without an active exception", seen once after a
    ``--stop-after`` slice; PyTorch's c10d describes the same abort for a group left to the shutdown)."""
    if ctx.enabled and ctx.owns_group:
        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (stage transitions, after rank 0 writes files)."""
    if ctx.enabled:
        import torch.distributed as dist

        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed (gradients averaged across ranks), else return as is.

    Rank 0's buffers reach every rank at each forward: DDP's default, left unnamed because naming it
    (``broadcast_buffers``) prints a deprecation warning from every rank since torch 2.13.
    """
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    wrapped = DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)
    if ctx.world_size >= 3:
        wrapped.register_comm_hook(None, allreduce_each_gradient)
    return wrapped


def allreduce_each_gradient(group, bucket):  # type: ignore[no-untyped-def]
    """DDP's averaging, one gradient at a time, so a gradient's sum does not depend on how DDP groups them.

    DDP regroups its buckets after its first backward, and a resumed run starts a fresh DDP: with three or more
    processes the ring sums an element in an order that depends on where it sits in its bucket, so a resumed run
    drifted from the uninterrupted one at the rounding level. Each gradient reduced alone sums the same way in both.
    (Two processes sum a + b, the same either way: DDP's own hook is kept there.) A DDP comm hook: ``group`` the
    process group (None: the default), ``bucket`` a ``torch.distributed.GradBucket``; it returns a completed future
    of the bucket's averaged flat gradients (made on the current stream, so on a GPU DDP's reader waits for it;
    this gives up overlapping the all-reduce with the rest of the backward). Unannotated, since DDP refuses the string
    annotations of this module.
    """
    import torch.distributed as dist

    grads = [g.div_(dist.get_world_size(group)) for g in bucket.gradients()]
    for g in grads:  # one at a time; on NCCL a blocking call only orders the current stream after it
        dist.all_reduce(g, group=group)
    buffer = bucket.buffer()
    done: "torch.futures.Future[torch.Tensor]" = torch.futures.Future(devices=[buffer.device] if buffer.is_cuda else None)
    done.set_result(torch.cat([g.reshape(-1) for g in grads]) if grads else buffer)
    return done


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (for saving, evaluation, and forwards that must not sync)."""
    return module.module if hasattr(module, "module") and isinstance(getattr(module, "module"), nn.Module) else module


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True if ``flag`` is set on any rank, so all ranks stop at the same iteration (SIGTERM may reach one first)."""
    if not ctx.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def values_on_ranks(value: str, ctx: DistContext) -> List[str]:
    """Each rank's ``value`` in rank order (just ``[value]`` in one process): what ranks that each read a file
    themselves must agree on, compared before they train."""
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    found: List[Optional[str]] = [None] * ctx.world_size
    dist.all_gather_object(found, value)
    return [str(v) for v in found]


def lost_contact(exc: BaseException) -> bool:
    """Whether an error raised in a collective means that another rank stopped or died: gloo and NCCL report it
    as a plain RuntimeError naming themselves or the closed connection."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed"))


def mean_over_ranks(values: Dict[str, float], ctx: DistContext) -> Dict[str, float]:
    """Average logged scalars over ranks (for reporting only)."""
    if not ctx.enabled or not values:
        return dict(values)
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, one broadcast per dtype.

    DDP syncs buffers at the start of each forward, but the last forward of a stage leaves each rank with
    its own running statistics; broadcasting at stage end makes the whole state identical on every rank. An
    EMA of G averages each rank's own statistics, so it is broadcast after every update (``StageTrainer.step``).
    """
    if not ctx.enabled:
        return
    import torch.distributed as dist

    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for buf in unwrap(module).buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for buffers in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.data.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def state_digest(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names and bytes), to prove ranks hold identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(module).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_rank_digest(modules: Iterable[nn.Module], ctx: DistContext, tag: str) -> Optional[Path]:
    """Test hook: when ``MEDSYNTH_RANK_DIGEST_DIR`` is set, each rank writes the digests of its weights there."""
    folder = os.environ.get(RANK_DIGEST_ENV)
    if not folder:
        return None
    digests: List[str] = [state_digest(m) for m in modules]
    out = Path(folder) / f"{tag}_rank{ctx.rank}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(digests) + "\n", encoding="utf-8")
    return out


def int_env(name: str, default: int) -> int:
    """An integer environment variable (RANK, WORLD_SIZE …) or ``default``."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
