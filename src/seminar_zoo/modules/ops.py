"""Small tensor operations shared by every model: masked softmax / top-K, row gathers, per-id encoding
and the per-step random stream of training.

* :func:`masked_softmax`: softmax over valid positions; an all-masked row gives zeros, not NaN.
* :func:`masked_topk`: top-K among valid positions, in ``score`` order (SIM / ETA / QIN / TWIN) or
  ``time`` order (SEMINAR's GSU: the ESU then reads the selected behaviours chronologically).
* :func:`gather_rows`: ``x[b, idx[b, k]]`` for [B, L, ...] tensors, differentiable in ``x``.
* :func:`encode_unique`: run an encoder once per distinct id and index back.
* :class:`StepRNG`: the random stream a training step draws from (dropout, sampled negatives),
  owned by the model and seeded from (seed, global step), so exact resume holds and the caller's
  global RNG is left alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Literal, Tuple

import torch


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(w, nan=0.0)  # all-masked rows -> 0


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int,
                order: Literal["score", "time"] = "score") -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k positions of ``scores`` [..., L] among the valid ones (``mask`` True).

    Returns (idx [..., k'], selected_mask [..., k']) with k' = min(k, L): by descending score
    (``order="score"``) or by ascending position, i.e. chronologically (``order="time"``). Invalid
    positions rank below every valid one, so they are only taken when fewer than k are valid, and then
    ``selected_mask`` is False there: a consumer must mask those slots out (never attend to padding).
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    if order not in ("score", "time"):
        raise ValueError(f"order must be 'score' or 'time', got {order!r}")
    k = min(k, scores.shape[-1])
    s = scores.detach().float().masked_fill(~mask, float("-inf"))
    idx = s.topk(k, dim=-1, sorted=True).indices
    if order == "time":
        idx = idx.sort(-1).values
    return idx, mask.gather(-1, idx)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] (or [B, L]) and idx [B, K] -> x at those positions [B, K, ...]; differentiable in x."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


def encode_unique(fn, ids: torch.Tensor, return_parts: bool = False):
    """``fn(ids)`` computed once per distinct id: a lifelong history repeats items, so the
    encoder runs on the batch's distinct ids and the result is indexed back (exactly the
    same values and, through the index, the same gradients as ``fn(ids)``).

    With ``return_parts`` also returns (per-distinct-id output [U, ...], inverse index
    with the shape of ``ids``), for callers that derive more from the distinct rows
    (hash signatures, projections: TWIN's pre-computed inherent-feature projection).
    """
    uniq, inv = torch.unique(ids, return_inverse=True)
    enc = fn(uniq)
    out = enc[inv]
    return (out, enc, inv) if return_parts else out


class StepRNG:
    """The random stream of one training step, owned by the model.

    :meth:`seed` (at each step's start) makes it a pure function of (seed, global step); :meth:`active`
    runs the step's forward with it as torch's default stream (dropout, ``torch.randint`` negatives,
    nn.Transformer's dropout draw from it) and hands the caller's streams back afterwards, advanced by
    nothing. A fit resumed from a checkpoint therefore draws exactly what the uninterrupted one drew.
    """

    def __init__(self):
        self._cpu = torch.Generator()
        self._cuda: dict = {}
        self.seeded = False

    def seed(self, value: int, device: torch.device) -> None:
        self._cpu.manual_seed(int(value))
        self._cuda = {}
        if device.type == "cuda":
            g = torch.Generator(device=device)
            g.manual_seed(int(value))
            self._cuda[device] = g
        self.seeded = True

    @contextmanager
    def active(self):
        if not self.seeded:
            yield
            return
        saved_cpu = torch.get_rng_state()
        saved_cuda = {d: torch.cuda.get_rng_state(d) for d in self._cuda}
        torch.set_rng_state(self._cpu.get_state())
        for d, g in self._cuda.items():
            torch.cuda.set_rng_state(g.get_state(), d)
        try:
            yield
        finally:
            self._cpu.set_state(torch.get_rng_state())
            torch.set_rng_state(saved_cpu)
            for d, g in self._cuda.items():
                g.set_state(torch.cuda.get_rng_state(d))
                torch.cuda.set_rng_state(saved_cuda[d], d)
