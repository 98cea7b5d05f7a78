"""Small torch.distributed helpers: init from torchrun's environment, rank/world, gathers.

Everything degrades to single-process behaviour when no process group is initialised, so the
same code runs on a laptop, one GPU, or ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env(device: str | None = None) -> tuple[int, int, int]:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Returns (rank, world_size, local_rank). Backend: NCCL when CUDA is used, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_dist():
        r, w = rank_world()
        return r, w, int(os.environ.get("LOCAL_RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    Same semantics as ``torch.distributed.nn.functional.all_gather`` (deprecated in recent
    torch): rank r's loss depends on all ranks' embeddings, so the gradient of the global
    objective w.r.t. this rank's rows is the all-reduced (summed) gradient of the gathered tensor.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum over ranks of d(loss_r)/d(gathered)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]  # (B, ...)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 keeping the autograd graph (equal sizes on every rank)."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)  # (world * B, ...)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradients (equal sizes on every rank)."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python scalar over ranks (for logging)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_float(value: float, device: torch.device | str = "cpu", src: int = 0) -> float:
    """Rank ``src``'s value on every rank (keeps per-rank decisions such as early stopping identical)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.broadcast(t, src)
    return float(t.item())
