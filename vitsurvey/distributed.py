"""Training past one process: PyTorch DistributedDataParallel through :func:`vitsurvey.train.fit`'s ``prepare`` hook.

``torchrun`` starts one process per GPU (``--nproc_per_node=G``), on one machine or several (``--nnodes``). Every
process holds the whole model and takes its share of each global batch: one seeded permutation of the training
set per epoch (:class:`~torch.utils.data.distributed.DistributedSampler`), every ``world``-th item to each process.
In backward, DDP averages the gradients over the processes, so each step is the step one process would take on
the whole global batch; the loss is a mean over the batch, so the average of the shares' gradients *is* the
batch's gradient. The same loader, with one process, is what single-process training uses, which makes the two
comparable step for step (a test checks the weights agree).

Nothing here is a second training loop: :func:`prepare` wraps model, optimiser and loader for ``fit``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .profiles import GRAD_CLIP

__all__ = ["Context", "init", "launched_by_torchrun", "prepare", "sharded", "shutdown"]


@dataclass(frozen=True)
class Context:
    """Where this process sits: its rank among ``world`` processes, its GPU (``local_rank``) on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, results and logs; the others only train."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` started this process (it sets the rank, world size and local rank)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init(device: str | None = None) -> Context:
    """This process's context. Under ``torchrun`` the process group is started (NCCL on GPUs, gloo on CPUs) and
    each process takes the GPU of its local rank; without it, a context of one process."""
    if not launched_by_torchrun():
        return Context(device=torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Context(rank, world, local, torch.device("cuda", local) if cuda else torch.device("cpu"))


def shutdown() -> None:
    """End the process group :func:`init` started, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sharded(loader: DataLoader, ctx: Context, seed: int) -> DataLoader:
    """``loader``'s data set in this process's shares of the same global batches: each epoch one permutation
    seeded by ``seed`` and the epoch (``fit`` calls ``set_epoch``), items ``rank, rank + world, ...`` to this
    process, ``batch_size / world`` per step. With one process it is a plain seeded shuffle."""
    global_batch = loader.batch_size or 1
    if global_batch % ctx.world:
        raise ValueError(f"The global batch ({global_batch}) must divide evenly among {ctx.world} processes; "
                         f"use a multiple of {ctx.world}.")
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    return DataLoader(loader.dataset, batch_size=global_batch // ctx.world, sampler=sampler, drop_last=True,
                      num_workers=loader.num_workers, pin_memory=ctx.device.type == "cuda")


def prepare(ctx: Context, seed: int):
    """A ``prepare`` hook for :func:`vitsurvey.train.fit`: the model wrapped in DDP (when there are several
    processes), the optimiser clipping the (already averaged) gradient norm to
    :data:`vitsurvey.profiles.GRAD_CLIP` before each step as ``fit`` does without a hook, and the loader
    :func:`sharded`."""

    def hook(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader):
        params = [p for p in model.parameters() if p.requires_grad]

        def clip(*_: object) -> None:
            nn.utils.clip_grad_norm_(params, GRAD_CLIP)

        opt.register_step_pre_hook(clip)
        net = model
        if ctx.world > 1:
            net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        return net, opt, sharded(loader, ctx, seed)

    return hook
