"""SEMINAR's GSU selection, exact or by multi-modal product quantization (arXiv 2407.10714, Sec. 3.4).

:class:`GSURetrieval` is mixed into :class:`~seminar_zoo.models.seminar.SEMINAR`. Training and validation
select the top-K with the exact GSU scores (the keys move while training). With ``retrieval: pq``, test and
predict select it with :class:`~seminar_zoo.modules.quantization.MultiModalPQ`: every distinct history is
encoded once and searched for all rows that share it (the ranking protocol's target and negatives) by the
quantizer's ``topk`` -- faiss fast-scan (``n_centroids <= 16``) or 8-bit IndexPQ on CPU with
``backend: auto``, the torch gather elsewhere.

Codebooks: fitted on GSU keys of training histories (:meth:`GSURetrieval.fit_pq`) when the loaded weights
have none; ``experiment`` writes them into the best checkpoint, so ``seminar-zoo test --ckpt_path BEST``
reuses them. A checkpoint of an exact model (or one with codebooks of another size) loads into a
``retrieval: pq`` model without a warning: the missing or mismatched quantizer state is refitted at test start.

Test extras: ``test/gsu/recall@K`` (share of the exact GSU's top-K that the selection finds; 1 for
exact), ``test/gsu/ms_per_request`` (selection time per scored row: exact scoring + top-K, or PQ encoding
+ search) and, with pq, ``test/gsu/exact_ms_per_request`` (the exact selection timed on the same rows),
``gsu_retrieval``, ``gsu_backend``, ``gsu_bytes_per_behaviour`` and a run ``name`` (``SEMINAR-pq`` unless
``experiment --name`` gave one).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.utilities import rank_zero_info

from ..modules.seminar_parts import gather_rows, masked_topk


def _now(x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


class GSURetrieval:
    """Exact / PQ top-K selection of SEMINAR's GSU, with recall and timing at test time (module docstring)."""

    pq_index: Optional[torch.nn.Module]

    def _make_pq(self, cfg: Dict[str, Any]):
        from ..modules.quantization import MultiModalPQ

        cfg = dict(cfg)
        self._pq_fit_rows = int(cfg.pop("fit_rows", 20000))
        cfg.setdefault("n_centroids", 64)
        cfg.setdefault("n_sub", 8)
        cfg.setdefault("backend", "auto")
        return MultiModalPQ(n_modalities=len(self.pair.active), dim=self.hparams.embed_dim, **cfg)

    def _reset_gsu_stats(self) -> None:
        self._gsu_stats = torch.zeros(5, dtype=torch.double)  # found, wanted, rows, seconds, exact seconds
        self._run_name: Optional[str] = getattr(self, "_run_name", None)

    # ---------------------------------------------------------------- switching
    @property
    def _pq_active(self) -> bool:
        return self.pq_index is not None and getattr(self, "_pq_on", False)

    def pq_retrieval(self, on: bool = True) -> None:
        """Switch the GSU to PQ scores (``retrieval: pq``; test/predict do this themselves) or back to exact."""
        if on and self.pq_index is None:
            raise RuntimeError("pq_retrieval: this model was built with retrieval: exact")
        self._pq_on = bool(on)

    def _pq_check(self) -> None:
        if not bool(self.pq_index.is_fitted):
            raise RuntimeError("retrieval: pq: the quantizer has no codebooks yet; call fit_pq(datamodule)")

    def _pq_scores(self, t: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Approximate GSU scores from per-modality vectors (t [B, M, d], kv [B, L, M, d])."""
        self._pq_check()
        codes = self.pq_index.encode(kv.detach().float())
        return self.pq_index.score(self.pq_index.lut(t.detach().float()), codes, mask)

    def _pq_start(self) -> None:
        """Test / predict start: fit the codebooks if the loaded weights have none, then select by PQ."""
        if self.pq_index is not None:
            if not bool(self.pq_index.is_fitted):
                self.fit_pq(self.trainer.datamodule)
            self._pq_on = True

    # ---------------------------------------------------------------- codebooks
    @torch.no_grad()
    def fit_pq(self, dm, seed: int = 0) -> None:
        """Fit the codebooks on GSU key vectors of a seeded sample of training histories (the same sample on
        every process, so all processes fit the same codebooks)."""
        if self.pq_index is None:
            raise RuntimeError("fit_pq: this model was built with retrieval: exact")
        t0 = time.perf_counter()
        dm.setup()
        if self.item_encoder.item_attr.abs().sum() == 0 and hasattr(dm, "feature_tables"):
            self.load_tables(dm.feature_tables())
        ds = dm.splits["train"]
        was = self.training
        self.eval()
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        vecs, n = [], 0
        for s in range(0, len(order), 64):
            h, q, m = (x.to(self.device) for x in self.history(ds.__getitems__(order[s:s + 64].tolist())))
            kv = self.gsu.attn.k(self.gsu.proj(self.modal(h, q)))[m]  # [n, M, d] real behaviours only
            vecs.append(kv.float().cpu())
            n += kv.shape[0]
            if n >= self._pq_fit_rows:
                break
        self.pq_index.fit(torch.cat(vecs)[: self._pq_fit_rows].to(self.device))
        self.train(was)
        rank_zero_info(f"[seminar] retrieval: pq: fitted {self.pq_index.extra_repr()} on {min(n, self._pq_fit_rows)} "
                       f"training behaviours in {time.perf_counter() - t0:.1f} s")

    def before_test(self, ctx) -> None:
        """``experiment``: fit the codebooks and write them into the best checkpoint (``test --ckpt_path`` reuses them)."""
        if ctx.name != type(self).__name__:
            self._run_name = ctx.name
        if self.pq_index is None:
            return
        self.fit_pq(ctx.datamodule)
        cbs = sorted(ctx.trainer.checkpoint_callbacks, key=lambda c: not getattr(c, "monitor", None))
        best = next((c.best_model_path or c.last_model_path for c in cbs if c.best_model_path or c.last_model_path), "")
        if best and Path(best).is_file() and ctx.trainer.is_global_zero:
            ckpt = torch.load(best, map_location="cpu", weights_only=False)
            ckpt["state_dict"].update({f"pq_index.{k}": v.cpu() for k, v in self.pq_index.state_dict().items()})
            torch.save(ckpt, best)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Reconcile the checkpoint's quantizer state with this model's: drop it for ``retrieval: exact``; fill
        in this model's unfitted state when it is missing or of another size (refitted at test start)."""
        state = checkpoint.get("state_dict", {})
        keys = [k for k in state if k.startswith("pq_index.")]
        if self.pq_index is None:
            for k in keys:
                del state[k]
            return
        own = {f"pq_index.{k}": v for k, v in self.pq_index.state_dict().items()}
        if any(k not in state or state[k].shape != v.shape for k, v in own.items()):
            if keys:
                rank_zero_info("[seminar] the checkpoint's PQ codebooks have another size; refitting at test start")
            for k in keys:
                del state[k]
            state.update({k: v.clone() for k, v in own.items()})
            state["pq_index.is_fitted"] = torch.tensor(False)

    # ---------------------------------------------------------------- selection
    def gsu_select(self, batch: Dict[str, torch.Tensor], target: torch.Tensor, hu: torch.Tensor, qu: torch.Tensor,
                   inv: torch.Tensor, m: torch.Tensor, keys_u: torch.Tensor, k: int):
        """(idx [B, K], selected [B, K], ESU bias [B, K] or None) of the GSU top-K; ``keys_u`` [U, L, d] are the
        W_k-projected fused pair vectors of the distinct histories ``hu``/``qu`` (row b has history ``inv[b]``)."""
        collect = getattr(self, "_collect", False)
        t0 = _now(m)
        exact = None
        if not self._pq_active or collect:
            s = self.gsu.scores_from_keys(target, keys_u[inv], m)
            exact = masked_topk(s, m, k)
        t1 = _now(m)
        if not self._pq_active:
            idx, sel = exact
            bias = gather_rows(s, idx).masked_fill(~sel, 0.0) if self.hparams.gsu_bias else None
            if collect:
                self._gsu_stats += torch.tensor([1.0, 1.0, m.shape[0], t1 - t0, t1 - t0], dtype=torch.double)
            return idx, sel, bias
        self._pq_check()
        with torch.no_grad():
            t = self.gsu.attn.q(self.gsu.proj(self.modal(batch["item_id"], batch["query_id"]))) * self.gsu.scale
            codes = self.pq_index.encode(self.gsu.attn.k(self.gsu.proj(self.modal(hu, qu))).float())  # [U, L, M, n_sub]
            mu = torch.zeros(len(hu), m.shape[1], dtype=torch.bool, device=m.device).index_copy(0, inv, m)
            _, idx = self.pq_index.topk(t.float(), codes, k, mask=mu, inv=inv)
            idx = idx.sort(1).values
            sel = m.gather(1, idx)
        t2 = _now(m)
        if collect:  # recall@K of the exact GSU's top-K
            ex, ex_sel = exact
            hit = torch.zeros_like(m).scatter(1, idx, sel)
            found = (hit.gather(1, ex) & ex_sel).sum().double()
            self._gsu_stats += torch.tensor([float(found), float(ex_sel.sum()), m.shape[0], t2 - t1, t1 - t0],
                                            dtype=torch.double)
        bias = None
        if self.hparams.gsu_bias:  # exact scores of the K selected only
            bias = self.gsu.scores_from_keys(target, gather_rows(keys_u[inv], idx), sel).masked_fill(~sel, 0.0)
        return idx, sel, bias

    def gsu_test_metrics(self) -> Dict[str, Any]:
        """The test extras of the module docstring (reduced over processes)."""
        r = self._gsu_stats.clone()
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if dist:  # seconds / rows summed over processes: the mean time per row
            r = r.to(self.device)
            torch.distributed.all_reduce(r)
            r = r.cpu()
        if float(r[2]) == 0:
            return {}
        pq = self._pq_active
        out: Dict[str, Any] = {f"test/gsu/recall@{self.hparams.topk}": float(r[0] / r[1].clamp_min(1)),
                               "test/gsu/ms_per_request": 1e3 * float(r[3] / r[2]),
                               "gsu_retrieval": "pq" if pq else "exact"}
        if pq:
            out.update({"test/gsu/exact_ms_per_request": 1e3 * float(r[4] / r[2]),
                        "gsu_backend": self.pq_index.resolved_backend(self.device, for_topk=True),
                        "gsu_bytes_per_behaviour": self.pq_index.bytes_per_behaviour})
        name = self._run_name or (f"{type(self).__name__}-pq" if pq else None)
        if name:
            out["name"] = name
        return out
