"""SEMINAR's pretraining losses and the distributed pieces they need (arXiv 2407.10714, Sec. 3.2).

* :func:`gather_with_grad`: CLIP-style all-gather across processes that keeps the local slot's
  gradient (uneven sizes allowed); :func:`dist_mean`: a per-sample mean over all processes.
* :func:`info_nce`: the in-batch N-pair loss on top of them (modality alignment, next pair).
* :func:`hash_uniform`: deterministic uniform numbers from integer ids (the PSU's drawn positions,
  the same on every process and after a resume).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All-gather ``x`` [n, ...] from every process along dim 0 (sizes may differ).

    The local slot is ``x`` itself, so gradients flow into the local rows; the other processes'
    rows are constants (CLIP / OpenCLIP ``local_loss`` style: the gradient a process's rows would
    get as *other* processes' negatives is not sent back). Returns (gathered, offset of the
    local rows). Without an initialised process group (or world size 1) returns (x, 0).
    """
    if not _dist_ready():
        return x, 0
    dist = torch.distributed
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    xp = torch.cat([x.detach(), pad], 0).contiguous()
    bufs = [torch.empty_like(xp) for _ in range(world)]
    dist.all_gather(bufs, xp)
    parts = [x if r == rank else bufs[r][: sizes[r]] for r in range(world)]
    return torch.cat(parts, 0), sum(sizes[:rank])


def dist_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses over *all* processes, as this process's share.

    Returns ``world * sum(local values) / global count``: averaged over processes (what DDP does
    to gradients and what a logger shows when it syncs) it is the mean over the concatenated
    batch, whatever the local counts are. Single process: the plain mean.
    """
    n = torch.tensor([float(values.numel())], device=values.device)
    world = 1
    if _dist_ready():
        torch.distributed.all_reduce(n)
        world = torch.distributed.get_world_size()
    if float(n) == 0:
        return values.sum() * 0.0
    return values.float().sum() * world / n[0]


def info_nce(a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch N-pair loss between two views a, b [n, d] of the same n items.

    Negatives are gathered from all processes (:func:`gather_with_grad`); anchors are the local
    rows, so the loss averaged over processes equals the single-process loss on the concatenated
    batch. Other rows with the same item id (``ids``) are not counted as negatives.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    a_all, off = gather_with_grad(a)
    b_all, _ = gather_with_grad(b)
    ids_all, _ = gather_with_grad(ids)
    n = a.shape[0]
    target = torch.arange(n, device=a.device) + off
    same = ids.unsqueeze(1) == ids_all.unsqueeze(0)
    same[torch.arange(n, device=a.device), target] = False
    l_ab = (a @ b_all.T / temperature).masked_fill(same, float("-inf"))
    l_ba = (b @ a_all.T / temperature).masked_fill(same, float("-inf"))
    per = 0.5 * (F.cross_entropy(l_ab, target, reduction="none") + F.cross_entropy(l_ba, target, reduction="none"))
    return dist_mean(per) + 0.0 * (a.sum() + b.sum())


def hash_uniform(*xs: torch.Tensor) -> torch.Tensor:
    """Deterministic uniform [0, 1) numbers from integer tensors (same on every process)."""
    h = torch.zeros(torch.broadcast_shapes(*[x.shape for x in xs]), dtype=torch.long, device=xs[0].device)
    for x in xs:
        h = (h * 1_000_003 + x.long() * 2_654_435_761 + 12_345) % 2_147_483_647
        h = (h ^ (h >> 13)) * 1_103_515_245 % 2_147_483_647
    return h.double().div(2_147_483_647).float()
