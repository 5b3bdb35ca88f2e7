"""torch.distributed helpers; every function also works in a plain single process."""
import datetime
import os

import torch
import torch.distributed as td


def enabled() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if enabled() else 0


def world_size() -> int:
    return td.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun started this process (it sets WORLD_SIZE and friends)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun prepared: nccl on CUDA (one GPU per local rank), gloo on CPU."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return device


def teardown(finished: bool) -> None:
    """Leave the process group. After a run that finished on this rank, wait for every rank first, so
    that no rank destroys gloo's connections while another still writes or reduces (a rank that exits
    early can abort with "terminate called without an active exception"). After a failure, do not
    wait: the other ranks may never arrive."""
    if not enabled():
        return
    if finished:
        td.barrier()
    td.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if enabled():
        td.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if enabled():
        td.all_reduce(t, op=td.ReduceOp.MAX)
    return t


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not enabled():
        return [obj]
    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out

