"""Data-parallel training under torchrun: which process this is, and the few collectives training needs.

`torchrun --nproc-per-node N -m model train ...` starts N copies of the usual command; each joins the process group
(`process_group`), takes its share of every batch of users (`shard`), and DistributedDataParallel averages the
gradients. Process 0 alone evaluates and writes; the others follow its decisions (`broadcast`). Without torchrun
every helper here is the identity and training is the one-process run it always was.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

# Process 0 may work alone for a long while as the others wait: embedding a large catalog, an evaluation. The
# default of 30 minutes (10 for NCCL) would stop a run that is only slow. A process that fails ends the others
# sooner: torchrun stops the whole group when one exits with an error.
TIMEOUT = datetime.timedelta(hours=3)


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets the same variables) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the group of processes this one was launched with, for the block: NCCL on CUDA, gloo on the CPU.

    Not launched as one of several, or already in a group: nothing to do.
    """
    if not launched() or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is the one that evaluates, logs and writes files (process 0)."""
    return rank() == 0


def describe() -> str:
    """What the log says about the processes: '' for one, else e.g. ', 2 processes (gloo)'."""
    return f", {world_size()} processes ({dist.get_backend()})" if active() and world_size() > 1 else ""


def local_device(device: torch.device) -> torch.device:
    """This process's own GPU when training on CUDA across processes (one GPU each), else `device`."""
    if device.type == "cuda" and active():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def wrap(module: nn.Module) -> nn.Module:
    """`module` in DistributedDataParallel when in a group, which averages its gradients over the processes as
    backward runs (and starts every process from process 0's weights); `module` itself otherwise."""
    if not active():
        return module
    # Not every parameter takes part in every step: the behaviour head is stage 2's, the query path can be off.
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True,
                                            forward_sync_buffers=False)


def shard(batch: Sequence) -> list:
    """This process's part of a batch that all processes drew alike: every world_size-th element."""
    return list(batch[rank()::world_size()])


def totals(values: Sequence[float], device: torch.device) -> list[float]:
    """Each of `values` summed over the processes (one collective for all of them)."""
    if not active():
        return [float(v) for v in values]
    summed = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def broadcast(value):
    """Process 0's `value` (any picklable object) on every process; the others pass anything (None)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Process 0 runs the block first (e.g. fills a cache on disk), the others after it (and read the cache)."""
    if not active():
        yield
        return
    if not is_main():
        dist.barrier()
    yield
    if is_main():
        dist.barrier()
