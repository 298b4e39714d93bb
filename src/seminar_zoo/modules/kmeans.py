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
