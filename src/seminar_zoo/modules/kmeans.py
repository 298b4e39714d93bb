"""Batched k-means pieces for :class:`~seminar_zoo.modules.quantization.MultiModalPQ`: all G codebooks at once."""
from __future__ import annotations

import math
from typing import Tuple

import torch


def assign(x: torch.Tensor, c: torch.Tensor, chunk_bytes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [G, N, s], c [G, K, s] -> (nearest centroid [G, N] long, squared distance [G, N])."""
    g, n, _ = x.shape
    cn = (c * c).sum(-1).unsqueeze(1)  # [G, 1, K]
    step = max(1, chunk_bytes // (4 * g * c.shape[1]))
    idx, dist = [], []
    for s in range(0, n, step):  # chunks of rows bound the [G, n, K] temporary; not a loop over elements
        xs = x[:, s:s + step]
        d = torch.baddbmm(cn, xs, c.transpose(1, 2), alpha=-2.0)  # ||c||^2 - 2 x.c
        v, i = d.min(-1)
        idx.append(i)
        dist.append((v + (xs * xs).sum(-1)).clamp_min_(0))
    return torch.cat(idx, 1), torch.cat(dist, 1)


def init_centroids(x: torch.Tensor, k: int, init: str, points_per_centroid: int, gen: torch.Generator) -> torch.Tensor:
    """x [G, N, s] -> [G, k, s] initial centroids of G codebooks at once (``random`` or ``kmeans++``)."""
    g, n, s = x.shape
    ar = torch.arange(g, device=x.device)
    if init == "random":
        order = torch.rand(g, n, generator=gen, device=x.device).argsort(1)
        if n < k:  # fewer points than centroids: repeat (duplicates stay exact copies of points)
            order = order.repeat(1, math.ceil(k / n))
        return x[ar[:, None], order[:, :k]]
    # k-means++ (D^2 sampling) on a subsample of at most ``init_points_per_centroid * K`` points, all G
    # codebooks at once: K sequential steps (not a loop over the points)
    m = min(n, points_per_centroid * k)
    if m < n:
        x = x[ar[:, None], torch.rand(g, n, generator=gen, device=x.device).argsort(1)[:, :m]]
        n = m
    xn = (x * x).sum(-1)  # [G, N]
    first = torch.randint(n, (g,), generator=gen, device=x.device)
    cents = [x[ar, first]]
    d2 = (xn - 2 * torch.bmm(x, cents[0][..., None]).squeeze(-1) + xn[ar, first][:, None]).clamp_min_(0)
    for _ in range(1, k):
        cdf = d2.cumsum(1)
        total = cdf[:, -1:]
        dead = total <= 0  # every point already is a centroid: pick uniformly
        cdf = torch.where(dead, torch.arange(1, n + 1, device=x.device, dtype=cdf.dtype), cdf)
        u = torch.rand(g, 1, generator=gen, device=x.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).squeeze(1).clamp_max_(n - 1)
        c = x[ar, pick]
        cents.append(c)
        dc = (xn - 2 * torch.bmm(x, c[..., None]).squeeze(-1) + xn[ar, pick][:, None]).clamp_min_(0)
        d2 = torch.minimum(d2, dc)
    return torch.stack(cents, 1)


def lloyd(xg: torch.Tensor, c: torch.Tensor, n_iter: int, chunk_bytes: int, assign_fn=None) -> torch.Tensor:
    """``n_iter`` Lloyd steps for G codebooks at once (x [G, N, s], initial c [G, K, s]); empty clusters are
    re-seeded with the worst-quantized points of their codebook (the r-th empty one takes the r-th farthest).
    ``assign_fn(c) -> (assign [G, N], dist [G, N])`` replaces nearest-centroid assignment (score-aware PQ)."""
    g, n, s = xg.shape
    k = c.shape[1]
    ar = torch.arange(g, device=xg.device)
    for _ in range(n_iter):
        lab, dist = assign_fn(c) if assign_fn else assign(xg, c, chunk_bytes)
        sums = torch.zeros(g, k, s, device=xg.device).scatter_add_(1, lab[..., None].expand(-1, -1, s), xg)
        counts = torch.zeros(g, k, device=xg.device).scatter_add_(1, lab, torch.ones_like(dist))
        new = sums / counts.clamp_min(1.0)[..., None]
        empty = counts == 0
        if bool(empty.any()):
            far = dist.topk(min(k, n), dim=1).indices  # [G, min(K, N)]
            rank = (empty.long().cumsum(1) - 1).clamp(0, far.shape[1] - 1)
            new = torch.where(empty[..., None], xg[ar[:, None], far.gather(1, rank)], new)
        c = new
    return c


def anisotropic_assign(xg: torch.Tensor, c: torch.Tensor, modality: torch.Tensor, eta: float, passes: int = 2,
                       chunk_rows: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score-aware PQ codes (ScaNN, Guo et al. ICML 2020, Sec. 3-4): minimise, per modality vector x with
    residual r = x - x_hat, ``||r||^2 + (eta - 1) <r, x>^2 / ||x||^2`` (the parallel residual, which moves the
    large inner products that decide a top-K, weighs eta times the orthogonal one), by coordinate descent over
    the sub-spaces starting from the nearest centroids.  x [G, N, s], c [G, K, s], modality [G] (the vector each
    sub-space belongs to) -> (codes [G, N], their squared distance [G, N])."""
    idx, dist = assign(xg, c, 4 * xg.shape[0] * c.shape[1] * chunk_rows)
    if eta == 1.0:
        return idx, dist
    g = xg.shape[0]
    m = int(modality.max()) + 1
    for s0 in range(0, xg.shape[1], chunk_rows):  # rows are independent: bound the [N, K] temporaries
        x, ix = xg[:, s0:s0 + chunk_rows], idx[:, s0:s0 + chunk_rows]
        xx = (x * x).sum(-1)  # [G, n]
        d2 = ((x * x).sum(-1, keepdim=True) - 2 * torch.bmm(x, c.transpose(1, 2)) + (c * c).sum(-1)[:, None])
        par = xx[..., None] - torch.bmm(x, c.transpose(1, 2))  # <x_g - c_k, x_g>: [G, n, K]
        norm2 = torch.zeros(m, x.shape[1], device=x.device).index_add_(0, modality, xx).clamp_min(1e-12)
        p = torch.zeros_like(norm2).index_add_(0, modality, par.gather(2, ix[..., None]).squeeze(-1))
        for _ in range(passes):
            for j in range(g):
                mj = int(modality[j])
                rest = p[mj] - par[j].gather(1, ix[j][:, None]).squeeze(1)
                loss = d2[j] + (eta - 1.0) * (rest[:, None] + par[j]) ** 2 / norm2[mj][:, None]
                ix[j] = loss.argmin(1)
                p[mj] = rest + par[j].gather(1, ix[j][:, None]).squeeze(1)
        dist[:, s0:s0 + chunk_rows] = d2.gather(2, ix[..., None]).squeeze(-1).clamp_min(0)
    return idx, dist
