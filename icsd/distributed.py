"""torch.distributed set-up from torchrun's (or SLURM's) environment, and the collectives the trainer needs.

torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``) win; when they are absent
and SLURM's are present (``srun python retrieval.py ...``, one task per GPU), rank, world size, local rank
and master address are taken from SLURM. Without either (or with one task) everything runs in one process
with no process group, and the collectives below are identities.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist

from icsd.errors import OtherRankFailed

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


DEFAULT_MASTER_PORT = "29500"


def _split_top_level(text: str) -> list[str]:
    """``"a[1,2],b"`` -> ``["a[1,2]", "b"]``: commas outside brackets separate host expressions."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names, in order: ``"node[01-03,7],gpu7"`` -> ``["node01",
    "node02", "node03", "node7", "gpu7"]`` (zero padding kept; several bracket groups per name work)."""
    hosts = []
    for expr in _split_top_level(nodelist.strip()):
        match = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", expr)
        if match is None:
            hosts.append(expr)
            continue
        prefix, ranges, rest = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not high:
                values = [low]
            else:
                values = [str(v).zfill(len(low)) for v in range(int(low), int(high) + 1)]
            for value in values:
                hosts.extend(prefix + value + tail for tail in (expand_nodelist(rest) if rest else [""]))
    return hosts


def slurm_environment(environ: Mapping[str, str]) -> Optional[dict[str, str]]:
    """torchrun-style variables derived from an ``srun`` task's environment, or None when torchrun's are set
    or SLURM's are absent. The world size is the step's task count (``SLURM_STEP_NUM_TASKS``, which srun
    sets), never the job's ``SLURM_NTASKS``: a batch script that runs ``python`` itself, without ``srun``,
    is one process, not one rank of a group that never forms."""
    if "WORLD_SIZE" in environ or "SLURM_PROCID" not in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return None
    out = {"WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"], "RANK": environ["SLURM_PROCID"],
           "LOCAL_RANK": environ.get("SLURM_LOCALID", "0")}
    if "MASTER_ADDR" not in environ:
        nodelist = next((environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if environ.get(k)), None)
        out["MASTER_ADDR"] = expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1"
    if "MASTER_PORT" not in environ:
        out["MASTER_PORT"] = DEFAULT_MASTER_PORT
    return out


def init_distributed(device_preference: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group torchrun (or SLURM's srun) describes (NCCL on GPU, gloo on CPU), or run alone."""
    slurm = slurm_environment(os.environ)
    if slurm is not None:
        os.environ.update(slurm)  # init_process_group's env:// reads them, report_error reads RANK
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv(device=select_device(device_preference))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    global _CONTROL_GROUP
    # The host-side messages between ranks (stop agreement, "the main rank's work failed") go over gloo: with
    # NCCL they would need device tensors, make the host wait for the GPU, and a dead peer would only be
    # noticed at NCCL's timeout. gloo notices a closed connection at once. Every rank creates it here.
    _CONTROL_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistEnv(rank, world_size, local_rank, device)


_CONTROL_GROUP = None


def control_group():
    """The gloo group for host-side messages (None: the default group, when it is gloo already)."""
    return _CONTROL_GROUP


def shutdown() -> None:
    global _CONTROL_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj):
    """A list of every rank's ``obj`` (rank order), over the host-side control group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_CONTROL_GROUP)
    return gathered


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (over the host-side control group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_CONTROL_GROUP)
    return box[0]


def run_on_main(env: DistEnv, work: Callable[[], T], what: str) -> T:
    """``work()`` on the main rank while the other ranks wait for its outcome; returns its result on every
    rank (it must pickle). If it fails, every rank stops at once: the main rank with its error, the others
    with ``OtherRankFailed`` (quiet: the main rank reports). So no rank exits while the main rank is still
    writing (a checkpoint), and none is left waiting at a collective for a rank that has gone."""
    result, failure = None, None
    if env.is_main:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - a Ctrl-C too: the others must not wait for it
            failure = exc
    failed = failure is not None
    if env.distributed:
        failed, result = broadcast_object((failed, None if failed else result))
    if failure is not None:
        raise failure
    if failed:
        raise OtherRankFailed(f"the main process failed {what}")
    return result


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward sums the gradients of all ranks and
    returns this rank's slice, so the gradient equals that of one process on the global batch."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())  # NCCL needs contiguous buffers of equal size
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computed the same global loss, each differentiating it w.r.t. all gathered rows;
        # the gradient of this rank's own rows is the sum of those contributions over the ranks, hence the
        # all-reduce (sum) before keeping the local slice. (torch.distributed.nn's all_gather does the same
        # but is not a stable API; this is the whole of it.)
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order, differentiable (equal sizes on all ranks)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
