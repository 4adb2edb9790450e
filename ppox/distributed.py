"""Multi-process training on torch.distributed, launched by torchrun.

`torchrun --nproc_per_node=N -m ppox train ENV_ID ...` starts N processes; each steps its own envs
(distinct seeds) and the processes average their gradients every minibatch with one flattened
all-reduce. Backend: gloo on CPU, NCCL on GPU. Without torchrun (no WORLD_SIZE in the environment)
everything here is a no-op and ppox runs as a single process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ppox.errors import ConfigError


@dataclass
class Collective:
    """The process group as the PPO update sees it: a world size and an in-place sum."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all processes, in place (returns it)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.sum_(tensor).div_(self.world_size) if self.enabled else tensor

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of `params` over processes with a single flattened all-reduce.

        Parameters without a gradient contribute zeros, so every process sends the same layout.
        """
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.mean_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        if not self.enabled:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def gather_objects(self, value: object) -> list[object]:
        """One picklable value from every process, in rank order (small metadata only)."""
        if not self.enabled:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def gather_floats(self, values: list[float]) -> list[float]:
        """Concatenate a list of floats from every process (e.g. finished episode returns)."""
        return [float(v) for part in self.gather_objects(list(values)) for v in part]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_SINGLE = Collective()
_current: Collective | None = None


def init_from_env(device_type: str = "cpu") -> Collective:
    """Join the process group torchrun describes in the environment (once per process)."""
    global _current
    if _current is not None:
        return _current
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        _current = _SINGLE
        return _current
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, store=_store(rank, world_size), rank=rank, world_size=world_size)
    _current = Collective(rank=rank, world_size=world_size, local_rank=local_rank)
    return _current


def resolve_device(name: str) -> torch.device:
    """`name` as a torch.device ("auto": cuda if a GPU is available, else cpu), refused on one line
    (ConfigError) if torch cannot use it here: no GPU, a GPU index this machine lacks, a bad name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from 0")
    elif device.type not in ("cpu", "mps") or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: not available here (use cpu, cuda or cuda:N)")
    return device


def init_device(name: str) -> tuple[torch.device, Collective]:
    """The device a trainer runs on and its process group (both trainers start here).

    Under torchrun each process joins the group and, with NCCL, takes the GPU of its local rank.
    """
    device = resolve_device(name)
    collective = init_from_env(device.type)
    if collective.enabled and device.type == "cuda":
        device = torch.device("cuda", collective.local_rank)
    return device, collective


def _store(rank: int, world_size: int) -> dist.Store:
    """torchrun's key-value store, under a prefix unique to this restart attempt.

    After `torchrun --max-restarts` relaunches the workers, the agent's store still holds the
    previous attempt's keys (the dead ranks' addresses); without a fresh prefix a new rank can
    read a stale address and fail to connect.
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
        is_master=(not use_agent_store and rank == 0), timeout=timedelta(minutes=10),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"ppox/attempt_{attempt}", store)


def shutdown() -> None:
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


def parameter_hash(module: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
