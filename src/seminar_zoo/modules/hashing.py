"""SimHash (random-hyperplane LSH) for ETA and SDIM.

Charikar's SimHash (STOC 2002): a vector ``x`` gets one bit per random hyperplane
``r_b``: ``bit_b(x) = [x . r_b > 0]``. For two vectors at angle ``theta`` each bit
differs with probability ``theta / pi``, so the Hamming distance between two
signatures estimates the angle and a bucket of ``tau`` bits collides with
probability ``(1 - theta / pi) ** tau``.

* ETA (Chen et al., arXiv 2108.04468 / 2209.12212) hashes behaviour and target embeddings to
  ``n_bits`` signatures and retrieves the top-K behaviours by Hamming distance.
* SDIM (Cao et al., CIKM 2022, arXiv 2205.10249) uses ``m`` hash functions of ``tau`` bits
  each; a behaviour contributes to hash ``j`` if its bucket id equals the target's.

The projections are random, drawn once from a seeded generator and stored as a
(persistent, non-trainable) buffer, so a checkpoint reproduces its hashes. Sign bits
are not differentiable; everything here runs without autograd.

Signatures are packed 32 bits per int64 word; the Hamming distance is the popcount
of the XOR (SWAR bit counting, vectorised in torch).
"""
from __future__ import annotations

import torch
from torch import nn

WORD_BITS = 32
_M1, _M2, _M4 = 0x55555555, 0x33333333, 0x0F0F0F0F


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[..., n] bool -> [..., ceil(n / 32)] int64, bit b of word w = bits[..., 32 * w + b]."""
    n = bits.shape[-1]
    n_words = -(-n // WORD_BITS)
    pad = n_words * WORD_BITS - n
    b = bits.to(torch.int64)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.view(*bits.shape[:-1], n_words, WORD_BITS)
    weights = torch.bitwise_left_shift(torch.ones(WORD_BITS, dtype=torch.int64, device=bits.device),
                                       torch.arange(WORD_BITS, device=bits.device))
    return (b * weights).sum(-1)  # distinct powers of two < 2^32: the sum is the bitwise OR


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 element holding a value in [0, 2^32)."""
    x = x - (torch.bitwise_right_shift(x, 1) & _M1)
    x = (x & _M2) + (torch.bitwise_right_shift(x, 2) & _M2)
    x = (x + torch.bitwise_right_shift(x, 4)) & _M4
    return torch.bitwise_right_shift(x * 0x01010101, 24) & 0xFF


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance between packed signatures [..., W] (broadcast) -> [...] int64."""
    return popcount(torch.bitwise_xor(a, b)).sum(-1)


class SimHash(nn.Module):
    """``n_hashes`` independent hash functions of ``n_bits`` random hyperplanes each.

    Args:
        dim: input width.
        n_bits: bits per hash function (ETA: the signature length; SDIM: tau).
        n_hashes: number of hash functions (ETA: 1; SDIM: m).
        seed: seeds the projections (fixed at construction, never trained).
    """

    def __init__(self, dim: int, n_bits: int, n_hashes: int = 1, seed: int = 0):
        super().__init__()
        if dim < 1 or n_bits < 1 or n_hashes < 1:
            raise ValueError(f"SimHash needs dim, n_bits, n_hashes >= 1; got {dim}, {n_bits}, {n_hashes}")
        self.dim, self.n_bits, self.n_hashes = dim, n_bits, n_hashes
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(dim, n_hashes * n_bits, generator=g))

    @torch.no_grad()
    def bits(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., n_hashes, n_bits] bool sign bits."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"SimHash expects inputs of width {self.dim}, got {tuple(x.shape)}")
        p = x.detach().to(self.proj.dtype) @ self.proj
        return (p > 0).view(*x.shape[:-1], self.n_hashes, self.n_bits)

    @torch.no_grad()
    def signature(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., n_words] packed signature of all n_hashes * n_bits bits."""
        return pack_bits(self.bits(x).flatten(-2))

    @torch.no_grad()
    def buckets(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., n_hashes] int64 bucket id of each hash function (in [0, 2^n_bits))."""
        if self.n_bits > 62:
            raise ValueError(f"bucket ids need n_bits <= 62, got {self.n_bits}")
        b = self.bits(x).to(torch.int64)
        weights = torch.bitwise_left_shift(torch.ones(self.n_bits, dtype=torch.int64, device=x.device),
                                           torch.arange(self.n_bits, device=x.device))
        return (b * weights).sum(-1)

    @torch.no_grad()
    def distance(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Hamming distance between the signatures of query [B, dim] and keys [B, L, dim] -> [B, L]."""
        return hamming(self.signature(query).unsqueeze(-2), self.signature(keys))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_bits={self.n_bits}, n_hashes={self.n_hashes}"
