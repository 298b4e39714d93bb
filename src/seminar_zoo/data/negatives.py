"""Per-user interacted-item sets and uniform sampling from their complement.

Negatives are drawn *uniformly among the items a user never interacted with*
(README, "Evaluation protocol"). Instead of drawing ids and rejecting seen ones,
a draw picks a rank ``r`` in ``[0, n_unseen(u))`` and maps it to the r-th unseen
item in closed form: with the user's sorted seen ids ``s_0 < s_1 < ...`` and
``a_i = s_i - 1 - i`` (unseen ids below ``s_i``), the r-th unseen id is
``r + 1 + #{i : a_i <= r}``, one ``searchsorted`` over all users at once.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


class Interacted:
    """CSR of each user's distinct interacted items (any label), ids 1..n_items."""

    def __init__(self, user: np.ndarray, item: np.ndarray, n_users: int, n_items: int):
        self.n_items = int(n_items)
        base = np.int64(n_items + 1)
        self.key = np.unique(user.astype(np.int64) * base + item.astype(np.int64))  # sorted (user, item)
        u = self.key // base
        self.items = self.key % base
        counts = np.bincount(u, minlength=n_users + 1)
        self.ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # user u: ptr[u]..ptr[u+1]
        within = np.arange(len(self.items)) - self.ptr[u]
        self._gap_key = u * base + (self.items - 1 - within)  # non-decreasing: see the module docstring
        self.n_unseen = self.n_items - counts

    def of(self, users: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(ptr [len(users)+1], items) : the CSR rows of ``users``."""
        users = np.asarray(users, np.int64)
        lo, hi = self.ptr[users], self.ptr[users + 1]
        n = hi - lo
        ptr = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        idx = np.repeat(lo - ptr[:-1], n) + np.arange(ptr[-1])
        return ptr, self.items[idx]

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Bool: has ``users`` interacted with ``items`` (broadcast)."""
        q = np.asarray(users, np.int64) * np.int64(self.n_items + 1) + np.asarray(items, np.int64)
        pos = np.minimum(np.searchsorted(self.key, q), max(len(self.key) - 1, 0))
        return self.key[pos] == q if len(self.key) else np.zeros(q.shape, bool)

    def unseen(self, users: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """The ``ranks``-th (0-based) item each user never interacted with (broadcast)."""
        users = np.asarray(users, np.int64)
        q = users * np.int64(self.n_items + 1) + ranks
        below = np.searchsorted(self._gap_key, q, side="right") - self.ptr[users]
        return ranks + 1 + below

    def sample(self, users: np.ndarray, k: int, rng: np.random.Generator, chunk: int = 1 << 15) -> np.ndarray:
        """[len(users), k] distinct unseen items per row, uniform without replacement, random order."""
        users = np.asarray(users, np.int64)
        out = np.zeros((len(users), k), np.int64)
        for lo in range(0, len(users), chunk):
            u = users[lo:lo + chunk]
            out[lo:lo + chunk] = self.unseen(u[:, None], _distinct_ranks(self.n_unseen[u], k, rng))
        return out


def _distinct_ranks(n: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[len(n), k]: per row, k distinct draws from range(n_row), uniform and in random order.

    Large ranges: i.i.d. draws, keep the first k distinct in draw order (sequential
    rejection, which is exactly uniform sampling without replacement); rows with too
    few distinct draws are redrawn whole (by symmetry the kept tuple stays uniform).
    Small ranges (n <= 4k): a random permutation of range(n), truncated.
    """
    out = np.zeros((len(n), k), np.int64)
    if k == 0 or not len(n):
        return out
    small = n <= 4 * k
    if small.any():
        i = np.flatnonzero(small)
        width = int(n[i].max())
        key = rng.random((len(i), width))
        key[np.arange(width)[None, :] >= n[i, None]] = 2.0  # outside the range: sorts last
        out[i] = np.argsort(key, axis=1)[:, :k]
    todo = np.flatnonzero(~small)
    m = k + k // 4 + 8
    while len(todo):
        d = np.floor(rng.random((len(todo), m)) * n[todo, None]).astype(np.int64)
        order = np.argsort(d, axis=1, kind="stable")
        sd = np.take_along_axis(d, order, 1)
        first_sorted = np.ones_like(sd, dtype=bool)
        first_sorted[:, 1:] = sd[:, 1:] != sd[:, :-1]  # stable sort: the earliest draw of a value comes first
        first = np.zeros_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, 1)
        keep = first & (np.cumsum(first, axis=1) <= k)
        ok = keep.sum(1) == k
        out[todo[ok]] = d[ok][keep[ok]].reshape(-1, k)
        todo = todo[~ok]
    return out
