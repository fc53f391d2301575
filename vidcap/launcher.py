"""Processes started by a launcher: `torchrun` (any --nnodes) or SLURM's `srun`.

`vidcap extract` and `vidcap evaluate` need no flag for it. Lightning's cluster environments (TorchElasticEnvironment,
SLURMEnvironment: the ones its Trainer uses to train on many nodes) say which process this one is, and
torch.distributed joins all of them into one process group through the env:// rendezvous. A plain command, or a
launcher that started a single process, runs as one process (`join` returns None).

Under a launcher, every process checks its settings before any work and all of them stop together with the first
error (`agree`): a process that raises alone would leave the others waiting in the next collective call.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from vidcap.errors import UsageError, VidcapError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a process waits for the others, to join the group and in each collective call (torch's default, which
# Lightning's Trainer uses too). A launcher's processes start together: a process that waits this long for the
# others to join is one of a world the launcher did not start (e.g. a SLURM job script that runs vidcap without srun).
TIMEOUT = default_pg_timeout


@dataclass(frozen=True)
class Process:
    """This process among those a launcher started, once `join` has put them in one process group."""

    launcher: str  # "torchrun" or "srun"
    rank: int  # 0 .. world_size - 1, over all nodes
    world_size: int
    local_rank: int  # among this node's processes: the index of its GPU
    local_world_size: int  # processes on this node (the same on every node)
    num_nodes: int

    @property
    def name(self) -> str:
        """"host:rank", how manifest.csv and error messages name a process."""
        return f"{socket.gethostname()}:{self.rank}"


def _environment() -> tuple[str, Any] | None:
    """(launcher, Lightning cluster environment) when a launcher started this process among others, else None."""
    # Importing lightning_fabric costs seconds: a plain command (no torchrun, no SLURM job) does not pay for it.
    if not (dist.is_torchelastic_launched() or "SLURM_NTASKS" in os.environ):
        return None
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    # torchrun first, as Lightning does: it can run inside a SLURM allocation.
    for launcher, kind in (("torchrun", TorchElasticEnvironment), ("srun", SLURMEnvironment)):
        if kind.detect():
            try:
                environment = kind()
            except RuntimeError as error:  # e.g. srun --ntasks without --ntasks-per-node
                raise UsageError(f"{launcher}: {' '.join(str(error).split())}") from None
            return (launcher, environment) if environment.world_size() > 1 else None
    return None


def distributed() -> bool:
    """True inside a process group of more than one process (Lightning's DDP, or join() under a launcher)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order ([value] outside a process group). Every rank must call it."""
    if not distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join(backend: str) -> Process | None:
    """Join the process group of the processes a launcher started (None when none did, or only this one).

    backend: "gloo" (CPU) or "nccl" (CUDA: this process's GPU is set to its local rank first). A group already
    initialised (a second call in the same process) is reused. UsageError when the others do not join in TIMEOUT.
    """
    found = _environment()
    if found is None:
        return None
    launcher, environment = found
    rank, world_size = environment.global_rank(), environment.world_size()
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(environment.local_rank())
        # Lightning's environments fill MASTER_ADDR / MASTER_PORT from the launcher's own variables (SLURM's node
        # list and job id); env:// reads them.
        os.environ["MASTER_ADDR"] = environment.main_address
        os.environ["MASTER_PORT"] = str(environment.main_port)
        try:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=TIMEOUT)
        except dist.DistError as error:
            raise UsageError(f"{launcher} process {rank} of {world_size}: the others did not join within {TIMEOUT} "
                             f"({' '.join(str(error).split())[:200]}); start every process with the launcher "
                             "(torchrun on each node, srun in the job script)") from None
        atexit.register(_leave)
    # Processes per node, from the group itself: every launcher names the node of each process.
    nodes: list[Any] = [None] * world_size
    dist.all_gather_object(nodes, environment.node_rank())
    per_node = Counter(nodes)
    if len(set(per_node.values())) > 1:
        counts = ", ".join(f"node {node}: {count}" for node, count in sorted(per_node.items()))
        raise UsageError(f"{launcher} started a different number of processes on each node ({counts}); start the "
                         "same number on every node")
    process = Process(launcher, rank, world_size, environment.local_rank(), per_node[environment.node_rank()],
                      len(per_node))
    logger.info("%s: process %d of %d (%d node(s))", launcher, rank, world_size, process.num_nodes)
    return process


def devices_per_node(process: Process, devices: int) -> int:
    """The `--devices` of a command under a launcher: each process it started is one device, so --devices may only
    repeat the number of processes on this node (1, the default, means "as the launcher says")."""
    if devices not in (1, process.local_world_size):
        raise UsageError(f"--devices {devices}, but {process.launcher} started {process.local_world_size} "
                         f"process(es) on this node ({process.name}); under a launcher each process is one device: "
                         "leave --devices out")
    return process.local_world_size


def agree(process: Process | None, step: Callable[[], T]) -> T:
    """step() on every process; a VidcapError (or OSError) on any of them is raised as a UsageError on all of
    them, the lowest rank's first, so that they stop together before any work. Without a launcher: step()."""
    if process is None:
        return step()
    result, error = None, None
    try:
        result = step()
    except (VidcapError, OSError) as exc:
        message = " ".join(str(exc).split())
        error = message if process.rank == 0 else f"process {process.name}: {message}"
    errors: list[str | None] = [None] * process.world_size
    dist.all_gather_object(errors, error)
    first = next((message for message in errors if message), None)
    if first is not None:
        raise UsageError(first)
    return result


def from_rank_zero(process: Process | None, value: T) -> T:
    """Rank 0's `value` on every process (a picklable object); without a launcher, `value`."""
    if process is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = ["Process", "agree", "devices_per_node", "from_rank_zero", "join"]
