"""SimHash (modules/hashing.py): bit packing, popcount, Hamming distance, LSH properties."""
import math

import pytest
import torch

from seminar_zoo.modules.hashing import SimHash, hamming, pack_bits, popcount


def test_popcount_matches_python():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2**32, (2000,), dtype=torch.int64, generator=g)
    x[:3] = torch.tensor([0, 2**32 - 1, 1])
    assert popcount(x).tolist() == [bin(int(v)).count("1") for v in x]


def test_pack_bits_and_hamming_match_unpacked_bits():
    g = torch.Generator().manual_seed(1)
    for n in (1, 7, 32, 33, 70):
        a = torch.rand(6, n, generator=g) > 0.5
        b = torch.rand(6, n, generator=g) > 0.5
        pa, pb = pack_bits(a), pack_bits(b)
        assert pa.shape == (6, -(-n // 32)) and pa.dtype == torch.int64
        assert torch.equal(hamming(pa, pb), (a != b).sum(-1))
    # bit b of word 0 is bits[..., b]
    bits = torch.zeros(1, 5, dtype=torch.bool)
    bits[0, 2] = True
    assert pack_bits(bits).item() == 4


def test_identical_zero_and_opposite_all_bits():
    torch.manual_seed(0)
    h = SimHash(16, n_bits=48, seed=3)
    v = torch.randn(5, 16)
    keys = torch.stack([v, -v, 2.5 * v], 1)  # [5, 3, 16]
    d = h.distance(v, keys)
    assert d[:, 0].eq(0).all()          # identical vectors: distance 0
    assert d[:, 1].eq(48).all()         # opposite vectors: every bit differs
    assert d[:, 2].eq(0).all()          # SimHash is scale invariant


def _pair_at_angle(theta: float, dim: int, g: torch.Generator):
    a = torch.randn(dim, generator=g)
    a = a / a.norm()
    r = torch.randn(dim, generator=g)
    r = r - (r @ a) * a
    r = r / r.norm()
    return a, math.cos(theta) * a + math.sin(theta) * r


def test_collision_rate_rises_with_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    h = SimHash(32, n_bits=1, n_hashes=4000, seed=7)
    rates = []
    for theta in (2.5, 1.5, 1.0, 0.5, 0.1):
        a, b = _pair_at_angle(theta, 32, g)
        same = (h.bits(a) == h.bits(b)).float().mean().item()
        assert abs(same - (1 - theta / math.pi)) < 0.04  # P(bit equal) = 1 - theta / pi
        rates.append(same)
    assert rates == sorted(rates)  # more similar -> more collisions
    # a tau-bit bucket collides with probability (1 - theta/pi)^tau
    hb = SimHash(32, n_bits=3, n_hashes=4000, seed=8)
    a, b = _pair_at_angle(1.0, 32, g)
    coll = (hb.buckets(a) == hb.buckets(b)).float().mean().item()
    assert abs(coll - (1 - 1.0 / math.pi) ** 3) < 0.04


def test_buckets_signatures_and_projection_buffer():
    h = SimHash(8, n_bits=3, n_hashes=5, seed=0)
    x = torch.randn(4, 7, 8)
    b = h.buckets(x)
    assert b.shape == (4, 7, 5) and b.min() >= 0 and b.max() < 8
    bits = h.bits(x).long()
    assert torch.equal(b, bits[..., 0] + 2 * bits[..., 1] + 4 * bits[..., 2])
    assert h.signature(x).shape == (4, 7, 1)
    # fixed, seeded, not trainable, saved with the model
    assert list(h.parameters()) == [] and "proj" in h.state_dict()
    assert torch.equal(SimHash(8, 3, 5, seed=0).proj, h.proj)
    assert not torch.equal(SimHash(8, 3, 5, seed=1).proj, h.proj)
    # no autograd through the sign bits
    y = torch.randn(3, 8, requires_grad=True)
    assert not h.buckets(y).requires_grad


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="width 8"):
        SimHash(8, 4).bits(torch.randn(2, 9))
    with pytest.raises(ValueError, match="n_bits"):
        SimHash(8, 0)
