"""Extraction under torchrun (torch.distributed): each rank encodes a disjoint share, rank 0 writes.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper here is a no-op on
a one-process context, so :func:`cmm_cache.extract.pipeline.extract` has one code path.
Backends: gloo on the CPU (tested with 2 processes), nccl on CUDA (one GPU per
rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cmm_cache.errors import CmmError


@dataclass
class DistContext:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """Each rank takes its own GPU (cuda:LOCAL_RANK) when the device is CUDA."""
        if self.active and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_errors(self, err):
        """Every rank's error (None when fine), on every rank."""
        if not self.active:
            return [err]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, err)
        return out

    @property
    def local_world(self) -> int:
        """Processes of this job on this machine (they share its cores)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) if self.active else 1

    def owns_chunk(self, chunk: int) -> bool:
        """Chunks are dealt round-robin: rank r encodes chunks r, r + world, r + 2 world, ..."""
        return chunk % self.world == self.rank

    def raise_any(self, err: BaseException | None) -> None:
        """Raise `err`, or another rank's error: every rank hears of a failure, none waits for a dead one."""

        mine = None if err is None else (getattr(err, "message", str(err)), getattr(err, "hint", None))
        errors = self.gather_errors(mine)
        if err is not None:
            raise err
        bad = [e for e in errors if e is not None]
        if bad:
            raise CmmError(f"Another torchrun rank failed: {bad[0][0]}", bad[0][1])

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized_here = False


def init_distributed(device: str) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1: gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    import datetime

    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    ctx = DistContext(rank=rank, world=world, local_rank=local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
        ctx.initialized_here = True
    return ctx
