"""Time-interval embedding of the behaviours a target attention reads (SIM Sec. 3.2, ETA's side
information): each behaviour's gap to the user's latest behaviour, log2-bucketed, a learned vector per
bucket, added to the behaviour vector.

The gap is measured to ``hist_ts[:, -1]`` (histories are right-aligned, so that is the latest
behaviour), not to the request time, which the batch does not carry. The table starts at zero, so a
model starts as its time-blind self and learns what recency is worth.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .ops import gather_rows


class TimeIntervalEmbedding(nn.Embedding):
    """``buckets + 1`` learned vectors of size ``dim``; bucket ``floor(log2(gap_seconds + 1))``, capped."""

    def __init__(self, dim: int, buckets: int = 32):
        super().__init__(int(buckets) + 1, dim)
        self.n_buckets = int(buckets)
        nn.init.zeros_(self.weight)

    def buckets(self, hist_ts: torch.Tensor, L: Optional[int] = None) -> torch.Tensor:
        """[B, L] bucket of each behaviour of the last ``L`` (default: all) of ``hist_ts``."""
        ts = hist_ts if L is None else hist_ts[:, -L:]
        gap = (ts[:, -1:] - ts).clamp(min=0).float()
        return torch.log2(gap + 1).long().clamp(0, self.n_buckets)

    def forward(self, batch, L: int, idx: Optional[torch.Tensor] = None, who: str = "model") -> torch.Tensor:
        """[B, L, dim] (or [B, K, dim] at positions ``idx`` [B, K]) for the last ``L`` behaviours of ``batch``."""
        if "hist_ts" not in batch:
            raise ValueError(f"{who}(time_embedding=True): the batch has no hist_ts; pass "
                             "--model.init_args.time_embedding false")
        b = self.buckets(batch["hist_ts"], L)
        return super().forward(b if idx is None else gather_rows(b, idx))
