"""Multi-modal product quantization for SEMINAR's GSU (arXiv 2407.10714, Sec. 3.4, "approximate retrieval").

SEMINAR scores a target against every behaviour, q_t . k_l = (sum_i gamma_i x_t^(i))^T (sum_j gamma_j x_l^(j))
(exact, O(L M d)), and approximates it with product quantization: every modality vector of a behaviour is
cut into ``n_sub`` sub-vectors, each replaced by the nearest of ``n_centroids`` k-means centroids of its
(modality, sub-space) codebook: ``M x n_sub`` one-byte codes per behaviour, a score is a sum of look-ups.

What this module computes, exactly: with ``k_hat_j`` the quantized behaviour vector of modality j, the
behaviour side quantized and the target side exact (asymmetric distance computation),

    s_l = sum_i sum_j <t_i, k_hat_{l,j}> = sum_j <sum_i t_i, k_hat_{l,j}>    (bilinearity: fold the target sum)
        = sum_j sum_c <(sum_i t_i)[c], C[j, c, code_{l,j,c}]> = sum_j sum_c LUT[j, c, code_{l,j,c}].

The folding is an identity: the folded table gives exactly the double sum over the M x M modality pairs of
the per-pair tables (:meth:`MultiModalPQ.lut` ``per_pair=True``; :meth:`MultiModalPQ.score` accepts
either), with O(L M n_sub) gathers per request instead of the paper's O(L M^2 N_bit).

gamma weights, the G(j) projections and any further linear map shared by all modalities (W_K, heads)
are applied *upstream*: the caller passes weighted, projected vectors to :meth:`fit` / :meth:`encode` /
:meth:`lut`.  Differences from the reference implementation (``inference/eval_seminar_recall.py``):

* The reference quantizes the target too and scores with centroid-centroid inner products
  (symmetric); we keep the target exact (asymmetric), which is at least as accurate and costs the
  same per behaviour because the table is built once per request.
* Our own seeded, batched k-means (all ``M * n_sub`` codebooks at once, k-means++ or random
  initialisation, fixed iterations, empty clusters re-seeded with the worst-quantized points)
  instead of faiss' ProductQuantizer.
* One codebook per (modality, sub-space); modalities share the width ``dim``.  ``n_sub`` may differ per
  modality (bit allocation by score-variance share, ``pq_backends.allocate_subspaces``): the sub-spaces of
  all modalities are then G = sum(n_sub) groups of width d / min(n_sub), narrower ones zero-padded (zeros
  change no distance or inner product), and codes / tables are flat ``[..., G]`` / ``[B, G, K]``.
* ``aniso_eta`` > 1: score-aware (anisotropic) codes and k-means assignments as in ScaNN (Guo et al.,
  ICML 2020): the residual parallel to a vector weighs ``aniso_eta`` times the orthogonal one
  (``kmeans.anisotropic_assign``); centroids stay cluster means (ScaNN solves a least-squares update).

Scoring backends (``backend=``, see ``modules/pq_backends.py``): ``torch`` (the reference, any device),
``compile`` (torch.compile'd gather), ``faiss4`` (faiss 4-bit fast-scan, ``n_centroids <= 16``),
``faiss8`` (faiss 8-bit IndexPQ), ``auto`` (faiss on CPU without autograd when installed and the
codes fit -- fast-scan for <= 16 centroids, IndexPQ for :meth:`topk` otherwise -- torch elsewhere).
Speed and recall of each: ``seminar-zoo bench retrieval`` (experiments/results/retrieval.md).  Usage::

    pq = MultiModalPQ(n_modalities=4, dim=64, n_sub=8, n_centroids=256, seed=0).fit(train)  # [N, M, d]
    codes = pq.encode(history)              # [B, L, M, n_sub] uint8, cache once per history
    table = pq.lut(target)                  # [B, M, n_sub, K]   (target [B, M, d] or fused [B, d])
    scores = pq.score(table, codes, mask)   # [B, L], padding -> -inf
    top_scores, top_idx = pq.topk(target, codes, k=50, mask=mask)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import kmeans
from .pq_backends import FAISS_BACKENDS, FaissScanner, compiled_gather_sum, faiss_available, gather_sum

_LUT_DTYPES = ("float32", "float16", "int16")
_BACKENDS = ("auto", "torch", "eager", "compile") + FAISS_BACKENDS


class MultiModalPQ(nn.Module):
    """Per-(modality, sub-space) product quantizer with look-up-table scoring (see module docstring).

    Args:
        n_modalities: M, the number of behaviour modalities.
        dim: d, the width of every modality vector.
        n_sub: sub-vectors per modality (must divide ``dim``), or one count per modality (see module docstring).
        aniso_eta: weight of the parallel residual in the score-aware loss (1 = plain k-means / nearest codes).
        n_centroids: centroids per codebook; at most 256 so codes fit in uint8.
        n_iter: Lloyd iterations of k-means.
        seed: seeds the training subsample and the initialisation.
        init: ``"kmeans++"`` or ``"random"``.
        max_points_per_centroid: :meth:`fit` subsamples at most this many training vectors per
            centroid (as faiss does, whose own warning threshold is 39), which bounds the fitting cost.
        init_points_per_centroid: k-means++ seeds on a subsample of at most this many points per centroid.
        lut_dtype: ``float32`` | ``float16`` | ``int16``: the type of the tables gathered by
            :meth:`score` (``int16`` tables are scaled per request and summed in int32; scores
            come back as float32 in the original units, up to the table rounding).
        backend: ``torch`` (alias ``eager``: batched torch.gather), ``compile`` (torch.compile of the
            same gather-sum), ``faiss4`` / ``faiss8`` (faiss fast-scan / IndexPQ, CPU) or ``auto``.
        chunk_bytes: size of the [G, rows, K] distance blocks of fitting and encoding (a cache-sized
            block is ~2x faster than one large one on CPU); eager scoring uses 8x this for its index blocks.
    """

    def __init__(self, n_modalities: int, dim: int, n_sub: Union[int, Sequence[int]] = 8, n_centroids: int = 256,
                 n_iter: int = 15, aniso_eta: float = 1.0,
                 seed: int = 0, init: str = "kmeans++", max_points_per_centroid: int = 64,
                 init_points_per_centroid: int = 16,
                 lut_dtype: str = "float32", backend: str = "torch", chunk_bytes: int = 2 << 20):
        super().__init__()
        if n_modalities < 1 or dim < 1:
            raise ValueError(f"MultiModalPQ: n_modalities and dim must be >= 1, got {n_modalities}, {dim}")
        subs = [n_sub] * n_modalities if isinstance(n_sub, int) else [int(x) for x in n_sub]
        if len(subs) != n_modalities or any(x < 1 or dim % x for x in subs):
            raise ValueError(f"MultiModalPQ: n_sub={n_sub} must be >= 1 and divide dim={dim} (one value, or one per "
                             f"modality, M={n_modalities}; valid: {[s for s in range(1, dim + 1) if dim % s == 0]})")
        if aniso_eta < 1:
            raise ValueError(f"MultiModalPQ: aniso_eta must be >= 1 (1 = plain k-means), got {aniso_eta}")
        if not 2 <= n_centroids <= 256:
            raise ValueError(f"MultiModalPQ: n_centroids={n_centroids} must be in [2, 256] so codes fit in uint8")
        if init not in ("kmeans++", "random"):
            raise ValueError(f"MultiModalPQ: init must be 'kmeans++' or 'random', got {init!r}")
        if n_iter < 0:
            raise ValueError(f"MultiModalPQ: n_iter must be >= 0, got {n_iter}")
        if lut_dtype not in _LUT_DTYPES:
            raise ValueError(f"MultiModalPQ: lut_dtype must be one of {_LUT_DTYPES}, got {lut_dtype!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"MultiModalPQ: backend must be one of {_BACKENDS}, got {backend!r}")
        if backend == "faiss4" and n_centroids > 16:
            raise ValueError(f"MultiModalPQ: backend faiss4 (4-bit fast-scan) needs n_centroids <= 16, got {n_centroids}")
        if backend in FAISS_BACKENDS and not faiss_available():
            raise ValueError(f"MultiModalPQ: backend {backend} needs faiss (pip install faiss-cpu)")
        self.n_modalities, self.dim, self.n_sub, self.n_centroids = n_modalities, dim, n_sub, n_centroids
        self.n_subs, self.sub_dim, self.aniso_eta = subs, dim // min(subs), float(aniso_eta)
        self.code_shape = (n_modalities, n_sub) if isinstance(n_sub, int) else (sum(subs),)
        self.n_iter, self.seed, self.init = n_iter, seed, init
        self.max_points_per_centroid = max_points_per_centroid
        self.init_points_per_centroid = init_points_per_centroid
        self.lut_dtype, self.backend, self.chunk_bytes = lut_dtype, backend, chunk_bytes
        self._compile_failed = False
        self.register_buffer("codebooks", torch.zeros(*self.code_shape, n_centroids, self.sub_dim))
        self.register_buffer("is_fitted", torch.tensor(False))
        self.register_buffer("_offsets", torch.arange(sum(subs)) * n_centroids, persistent=False)
        self.register_buffer("_modality", torch.repeat_interleave(torch.arange(n_modalities), torch.tensor(subs)),
                             persistent=False)  # the modality of each (modality, sub-space) group

    # ------------------------------------------------------------------ properties
    @property
    def n_groups(self) -> int:
        """sum of n_sub over the modalities: the number of codebooks (and of one-byte codes per behaviour)."""
        return len(self._modality)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., M, d]`` -> ``[..., G, s]`` sub-vectors of every (modality, sub-space), zero-padded to s."""
        if len(self.code_shape) == 2:
            return x.reshape(*x.shape[:-2], self.n_groups, self.sub_dim)
        parts = [x[..., j, :].reshape(*x.shape[:-2], n, self.dim // n) for j, n in enumerate(self.n_subs)]
        return torch.cat([torch.nn.functional.pad(p, (0, self.sub_dim - p.shape[-1])) for p in parts], -2)

    def _merge(self, xg: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_split`: ``[..., G, s]`` -> ``[..., M, d]``."""
        if len(self.code_shape) == 2:
            return xg.reshape(*xg.shape[:-2], self.n_modalities, self.dim)
        parts = xg.split(self.n_subs, dim=-2)
        return torch.stack([p[..., : self.dim // n].reshape(*p.shape[:-2], self.dim)
                            for p, n in zip(parts, self.n_subs)], -2)

    def _assign(self, xg: torch.Tensor, c: torch.Tensor):
        """Codes of sub-vectors xg [G, N, s]: nearest centroid, or score-aware with ``aniso_eta`` > 1."""
        if self.aniso_eta == 1.0:
            return kmeans.assign(xg, c, self.chunk_bytes)
        return kmeans.anisotropic_assign(xg, c, self._modality.to(xg.device), self.aniso_eta)

    @property
    def bytes_per_behaviour(self) -> int:
        return self.n_groups

    def extra_repr(self) -> str:
        return (f"M={self.n_modalities}, d={self.dim}, n_sub={self.n_sub}, n_centroids={self.n_centroids}, "
                f"{'aniso_eta=' + str(self.aniso_eta) + ', ' if self.aniso_eta != 1 else ''}"
                f"bytes/behaviour={self.bytes_per_behaviour}, fitted={bool(self.is_fitted)}")

    # ------------------------------------------------------------------ checks
    def _check_vectors(self, x: torch.Tensor, what: str) -> None:
        if not torch.is_tensor(x) or x.dim() < 2 or tuple(x.shape[-2:]) != (self.n_modalities, self.dim):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"MultiModalPQ.{what}: expected vectors [..., M={self.n_modalities}, d={self.dim}], "
                             f"got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"MultiModalPQ.{what}: vectors must be floating point, got {x.dtype}")

    def _check_fitted(self, what: str) -> None:
        if not bool(self.is_fitted):
            raise RuntimeError(f"MultiModalPQ.{what}: the codebooks are not fitted; call fit(vectors) first "
                               f"(or load a state_dict of a fitted quantizer)")

    # ------------------------------------------------------------------ k-means
    @torch.no_grad()
    def fit(self, vectors: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "MultiModalPQ":
        """Fit all ``M * n_sub`` codebooks on training behaviour vectors ``[..., M, d]`` (seeded k-means).

        ``mask`` (same leading shape, bool) selects the real behaviours (padding excluded).
        """
        self._check_vectors(vectors, "fit")
        x = vectors.detach().reshape(-1, self.n_modalities, self.dim).float()
        if mask is not None:
            if tuple(mask.shape) != tuple(vectors.shape[:-2]):
                raise ValueError(f"MultiModalPQ.fit: mask shape {tuple(mask.shape)} must equal the vectors' "
                                 f"leading shape {tuple(vectors.shape[:-2])}")
            x = x[mask.reshape(-1).bool()]
        n = x.shape[0]
        if n == 0:
            raise ValueError("MultiModalPQ.fit: no training vectors (empty input or all masked)")
        if not torch.isfinite(x).all():
            raise ValueError("MultiModalPQ.fit: training vectors contain NaN or inf")
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        cap = self.max_points_per_centroid * self.n_centroids
        if n > cap:
            x = x[torch.randperm(n, generator=gen, device=x.device)[:cap]]
            n = cap
        xg = self._split(x).transpose(0, 1).contiguous()  # [G, N, s]
        c = kmeans.init_centroids(xg, self.n_centroids, self.init, self.init_points_per_centroid, gen)
        c = kmeans.lloyd(xg, c, self.n_iter, self.chunk_bytes, None if self.aniso_eta == 1 else
                         (lambda cb: self._assign(xg, cb)))
        self.codebooks.copy_(c.reshape(self.codebooks.shape))
        self.is_fitted.fill_(True)
        return self

    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[..., M, d]`` float -> ``[..., M, n_sub]`` uint8 codes (nearest centroid per sub-vector).

        Compute once per history and cache: a history of L behaviours is L * M * n_sub bytes.
        """
        self._check_fitted("encode")
        self._check_vectors(vectors, "encode")
        lead = vectors.shape[:-2]
        xg = self._split(vectors.detach().reshape(-1, self.n_modalities, self.dim).to(self.codebooks)).transpose(0, 1)
        idx, _ = self._assign(xg, self.codebooks.reshape(self.n_groups, self.n_centroids, self.sub_dim))  # [G, N]
        return idx.to(torch.uint8).t().reshape(*lead, *self.code_shape)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., M, n_sub]`` codes -> ``[..., M, d]`` reconstructed (quantized) vectors."""
        self._check_fitted("decode")
        self._check_codes(codes, "decode")
        lead = codes.shape[:codes.dim() - len(self.code_shape)]
        c = codes.reshape(-1, self.n_groups).long().t()  # [G, N]
        cb = self.codebooks.reshape(self.n_groups, self.n_centroids, self.sub_dim)
        rec = cb[torch.arange(self.n_groups, device=c.device)[:, None], c]  # [G, N, s]
        return self._merge(rec.transpose(0, 1)).reshape(*lead, self.n_modalities, self.dim)

    def _check_codes(self, codes: torch.Tensor, what: str) -> None:
        cs = self.code_shape
        if codes.dtype != torch.uint8 or codes.dim() < len(cs) or tuple(codes.shape[codes.dim() - len(cs):]) != cs:
            raise ValueError(f"MultiModalPQ.{what}: expected uint8 codes [..., {', '.join(map(str, cs))}] "
                             f"(M={self.n_modalities}, n_sub={self.n_sub}) from encode(), got {codes.dtype} {tuple(codes.shape)}")

    # ------------------------------------------------------------------ look-up tables and scores
    def lut(self, target: torch.Tensor, per_pair: bool = False, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-request look-up tables.

        ``target``: ``[B, M_t, d]`` per-modality target vectors (gamma-weighted, projected), or their
        sum ``[B, d]``.  Returns the folded table ``[B, M, n_sub, K]`` with
        ``T[b, j, c, k] = <(sum_i target[b, i])[c], C[j, c, k]>``, or with ``per_pair=True`` the
        per-modality-pair tables ``[B, M_t, M, n_sub, K]`` whose sum over ``M_t`` is the folded one.

        ``weights`` (optional, ``[M]`` or ``[B, M]``) multiplies the table of behaviour modality j by
        ``weights[j]``: the score then equals sum_j w_j <t, k_hat_j>, so per-request modality weights
        (gamma_j, or SEMINAR's query/item lambda) can change without re-encoding the cached codes.
        """
        self._check_fitted("lut")
        if target.dim() == 2 and target.shape[-1] == self.dim:
            if per_pair:
                raise ValueError("MultiModalPQ.lut: per_pair=True needs per-modality targets [B, M_t, d]")
            t = target
        elif target.dim() == 3 and target.shape[-1] == self.dim:
            t = target if per_pair else target.sum(1)
        else:
            raise ValueError(f"MultiModalPQ.lut: expected target [B, M_t, d={self.dim}] or fused [B, d={self.dim}], "
                             f"got {tuple(target.shape)}")
        t = t.to(self.codebooks.dtype)
        if len(self.code_shape) == 1:  # per-modality n_sub: the target's sub-vector of every group
            ts = self._split(t.unsqueeze(-2).expand(*t.shape[:-1], self.n_modalities, self.dim))
            out = torch.einsum("...gs,gks->...gk", ts, self.codebooks)  # [B, (M_t,) G, K]
        elif per_pair:
            ts = t.reshape(*t.shape[:-1], self.n_sub, self.sub_dim)
            out = torch.einsum("bics,jcks->bijck", ts, self.codebooks)
        else:
            ts = t.reshape(*t.shape[:-1], self.n_sub, self.sub_dim)  # one bmm over the sub-spaces (cheaper per request than einsum's planning)
            key = (self.codebooks.data_ptr(), self.codebooks._version, self.codebooks.device)
            if getattr(self, "_cb_key", None) != key:  # cache the [n_sub, s, M*K] layout between requests
                self._cb_t = self.codebooks.permute(1, 3, 0, 2).reshape(self.n_sub, self.sub_dim, -1)
                self._cb_key = key
            cb = self._cb_t
            out = torch.bmm(ts.transpose(0, 1), cb).reshape(self.n_sub, -1, self.n_modalities, self.n_centroids)
            out = out.permute(1, 2, 0, 3)  # [B, M, n_sub, K]
        if weights is not None:
            w = weights.to(out)
            if w.dim() == 1:
                w = w.unsqueeze(0)
            if w.dim() != 2 or w.shape[-1] != self.n_modalities or w.shape[0] not in (1, out.shape[0]):
                raise ValueError(f"MultiModalPQ.lut: weights must be [M={self.n_modalities}] or "
                                 f"[B={out.shape[0]}, M], got {tuple(weights.shape)}")
            if len(self.code_shape) == 1:
                w = w[:, self._modality.to(w.device)]  # [B, G]
            w = w.reshape(*w.shape, *[1] * (out.dim() - w.dim() - (1 if per_pair else 0)))
            out = out * (w[:, None] if per_pair else w)
        return out

    def resolved_backend(self, device: torch.device, for_topk: bool = False) -> str:
        """The scorer that runs for tensors on ``device``: ``torch``, ``compile``, ``faiss4`` or ``faiss8``."""
        b = {"eager": "torch"}.get(self.backend, self.backend)
        if b == "auto":
            cpu = torch.device(device).type == "cpu" and not torch.is_grad_enabled() and faiss_available()
            if cpu and self.n_centroids <= 16:
                return "faiss4"
            return "faiss8" if cpu and for_topk else "torch"
        if b == "compile" and self._compile_failed:
            return "torch"
        return b

    def _faiss_tables(self, lut: torch.Tensor) -> np.ndarray:
        return lut.detach().reshape(lut.shape[0], self.n_groups, self.n_centroids).float().cpu().numpy()

    def scanner(self, codes: torch.Tensor, backend: str = "faiss4") -> FaissScanner:
        """A faiss index over one history's codes ``[L, M, n_sub]``: cache it per history and search it with
        ``search(lut[b].reshape(G, K), k)``, or ``search_query(fused_target.repeat(M), k)`` (faiss builds the table)."""
        self._check_fitted("scanner")
        self._check_codes(codes, "scanner")
        if backend not in FAISS_BACKENDS or (backend == "faiss4" and self.n_centroids > 16):
            raise ValueError(f"MultiModalPQ.scanner: backend must be faiss4 (n_centroids <= 16) or faiss8, got {backend}")
        cb = self.codebooks.reshape(self.n_groups, self.n_centroids, -1).cpu().numpy()
        return FaissScanner(codes.reshape(-1, self.n_groups).cpu().numpy(), 4 if backend == "faiss4" else 8, cb)

    def score(self, lut: torch.Tensor, codes: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Approximate scores ``[B, L]``: the sum over (modality, sub-space) of table entries gathered by the codes.

        ``lut``: from :meth:`lut` (folded ``[B, M, n_sub, K]`` or per-pair ``[B, M_t, M, n_sub, K]``);
        ``codes``: ``[B, L, M, n_sub]`` uint8; ``mask``: ``[B, L]`` bool, False (padding) -> -inf.
        """
        self._check_codes(codes, "score")
        cs, k = self.code_shape, self.n_centroids
        if codes.dim() != 2 + len(cs):
            raise ValueError(f"MultiModalPQ.score: codes must be [B, L, {', '.join(map(str, cs))}], got {tuple(codes.shape)}")
        if lut.dim() == len(cs) + 3:
            lut = lut.sum(1)
        if lut.dim() != len(cs) + 2 or tuple(lut.shape[1:]) != (*cs, k):
            raise ValueError(f"MultiModalPQ.score: lut must be [B, {', '.join(map(str, cs))}, "
                             f"K={k}] (from lut()), got {tuple(lut.shape)}")
        b, l = codes.shape[:2]
        if lut.shape[0] != b:
            raise ValueError(f"MultiModalPQ.score: lut batch {lut.shape[0]} != codes batch {b}")
        if mask is not None and tuple(mask.shape) != (b, l):
            raise ValueError(f"MultiModalPQ.score: mask must be [B, L]=({b}, {l}), got {tuple(mask.shape)}")
        flat = lut.reshape(b, self.n_groups * k).float()
        codes = codes.reshape(b, l, self.n_groups)
        offsets = self._offsets.to(codes.device)
        out, backend = None, self.resolved_backend(codes.device)
        if backend in FAISS_BACKENDS:
            tables, cnp = self._faiss_tables(flat), codes.cpu().numpy()
            out = torch.from_numpy(np.stack([FaissScanner(cnp[i], 4 if backend == "faiss4" else 8).scores(tables[i])
                                             for i in range(b)]) if b else np.zeros((0, l), np.float32))
            out = out.to(codes.device)
        elif backend == "compile":
            try:
                out = compiled_gather_sum()(flat, codes, offsets, self.lut_dtype)
            except Exception:  # no C++ toolchain, unsupported dtype, ...: fall back to eager
                if self.backend == "compile":
                    raise
                self._compile_failed = True
        if out is None:
            step = max(1, 8 * self.chunk_bytes // (8 * self.n_groups * b))
            out = torch.cat([gather_sum(flat, codes[:, s:s + step], offsets, self.lut_dtype)
                             for s in range(0, l, step)], 1)
        if mask is not None:
            out = out.masked_fill(~mask.bool(), float("-inf"))
        return out

    def topk(self, target: torch.Tensor, codes: torch.Tensor, k: int, mask: Optional[torch.Tensor] = None,
             inv: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k behaviours by approximate score: ``(scores [B, k'], indices [B, k'])``, k' = min(k, L).

        Where fewer than k behaviours are real, the tail holds padded positions with score -inf.
        ``inv`` ([B] long): ``codes`` / ``mask`` hold U distinct histories ``[U, L, ...]`` and row b uses
        history ``inv[b]``; faiss then builds one index per history and searches all its rows in one call.
        """
        backend = self.resolved_backend(codes.device, for_topk=True)
        if backend not in FAISS_BACKENDS:
            if inv is not None:
                codes, mask = codes[inv], None if mask is None else mask[inv]
            s = self.score(self.lut(target), codes, mask)
            return s.topk(min(k, s.shape[1]), dim=1)
        self._check_codes(codes, "topk")
        u, l = codes.shape[:2]
        b, k = target.shape[0], min(k, l)
        inv = torch.arange(u) if inv is None else inv.cpu()
        m = torch.ones(u, l, dtype=torch.bool) if mask is None else mask.bool().cpu()
        t = (target.sum(1) if target.dim() == 3 else target).detach().float().cpu()
        t = self._split(t[:, None].expand(-1, self.n_modalities, -1).to(self.codebooks)).reshape(b, -1).cpu().numpy()
        vals, idx = torch.full((b, k), float("-inf")), torch.zeros(b, k, dtype=torch.long)
        for h in inv.unique().tolist():  # one index per distinct history, all of its rows at once
            rows_b, rows = (inv == h).nonzero().squeeze(1), m[h].nonzero().squeeze(1)
            d, j = self.scanner(codes[h, rows], backend).search_query(t[rows_b.numpy()], k)
            n = j.shape[1]
            vals[rows_b, :n], idx[rows_b, :n] = torch.from_numpy(d), rows[torch.from_numpy(j)]
            idx[rows_b, n:] = (~m[h]).nonzero().squeeze(1)[: k - n]  # padding fills the tail, as torch does
        return vals.to(codes.device), idx.to(codes.device)

    @staticmethod
    def exact_score(target: torch.Tensor, vectors: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reference: sum_i sum_j <target_i, vectors_j>, target [B, M_t, d] or [B, d], vectors [B, L, M, d]."""
        t = target.sum(1) if target.dim() == 3 else target
        s = torch.einsum("bd,bld->bl", t, vectors.sum(2))
        if mask is not None:
            s = s.masked_fill(~mask.bool(), float("-inf"))
        return s
