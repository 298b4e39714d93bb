"""SEMINAR's test extras, as a callback and metric objects (``metrics.json`` via ``extra_test_metrics``).

:class:`SeminarTestExtras` (returned by ``SEMINAR.configure_callbacks``, so ``fit``, ``test`` and
``experiment`` all have it) switches the GSU to PQ retrieval for test / predict (fitting the codebooks
first when the loaded weights have none) and back to exact afterwards, and at test time hangs a
:class:`GSUProbe` on the model, which ``interest()`` feeds with what it selected. At the end of the test
epoch it writes:

* ``test/auc_cold_targets`` / ``test/auc_warm_targets`` / ``test/n_cold_targets`` / ``test/n_warm_targets``
  (:class:`ColdTargetAUC`: AUC over test lists whose positive item never / sometimes was a training
  target, the paper's ID-sparsity claim, Sec. 1);
* ``test/modality_weight/<m>``: mean share of modality m in the GSU score of the true targets, weighted by
  the GSU attention (:meth:`GSU.modality_shares <seminar_zoo.models.seminar.gsu.GSU.modality_shares>`);
* ``test/gamma/<m>``: softmax(gamma);
* ``test/gsu/recall@K`` (share of the exact GSU's top-K that the selection finds; 1 for exact),
  ``test/gsu/ms_per_request`` (selection time per scored row: exact scoring + top-K, or PQ encoding +
  search) and, with pq, ``test/gsu/exact_ms_per_request`` (the exact selection timed on the same rows),
  ``gsu_retrieval``, ``gsu_backend``, ``gsu_bytes_per_behaviour`` and a run ``name`` (``SEMINAR-pq``
  unless the model's ``run_name`` is set, as ``experiment --name`` does).
"""
from __future__ import annotations

from typing import Dict, List

import pytorch_lightning as pl
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ...metrics import _binary_auc


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def cold_items(dm) -> torch.Tensor:
    """Bool [n_items + 1]: items that are never a positive training target of ``dm``."""
    pos_items = dm.train_target_items()
    cold = torch.ones(int(dm.data_meta["n_items"]) + 1, dtype=torch.bool)
    cold[torch.as_tensor(pos_items, dtype=torch.long)] = False
    cold[0] = False
    return cold


class ColdTargetAUC(Metric):
    """AUC over the ranking lists whose positive is a *cold* item (never a training target).

    ``update(preds, target, groups, items)`` per batch; ``compute_split(cold_items)`` with a bool tensor
    [n_items + 1]. Ranking protocol: a list (group) is cold if its positive item is cold, and the
    AUC is over all rows of cold lists (and, separately, warm lists). ``per_row=True`` (the ctr
    protocol) selects rows by their own item instead.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for s in ("preds", "target", "groups", "items"):
            self.add_state(s, default=[], dist_reduce_fx="cat")

    def update(self, preds, target, groups, items) -> None:
        self.preds.append(preds.detach().float().flatten())
        self.target.append(target.detach().long().flatten())
        self.groups.append(groups.detach().long().flatten())
        self.items.append(items.detach().long().flatten())

    def compute_split(self, cold_items: torch.Tensor, per_row: bool = False) -> Dict[str, float]:
        ready = _dist() and torch.distributed.get_world_size() > 1
        with self.sync_context(should_sync=ready):
            if not isinstance(self.preds, torch.Tensor) and not self.preds:
                return {}
            p, t, g, it = (dim_zero_cat(x) for x in (self.preds, self.target, self.groups, self.items))
        if p.numel() == 0:
            return {}
        cold_items = cold_items.to(it.device)
        if per_row:
            is_cold = cold_items[it]
        else:
            pos = t > 0
            cold_groups = torch.unique(g[pos & cold_items[it]])
            is_cold = torch.isin(g, cold_groups)
        out = {}
        for name, sel in (("cold", is_cold), ("warm", ~is_cold)):
            tt = t[sel]
            npos = int(tt.sum())
            out[f"n_{name}"] = float(npos if not per_row else sel.sum())
            out[name] = float(_binary_auc(p[sel].double(), tt)) if 0 < npos < tt.numel() else float("nan")
        return out

    def compute(self):  # torchmetrics API; callers use compute_split
        raise NotImplementedError("use compute_split(cold_items)")


class GSUProbe:
    """What the GSU did over a test epoch: recall of the exact top-K, selection times, modality shares.
    ``SEMINAR.interest`` calls :meth:`record` while the probe hangs on the model (``model.gsu_probe``)."""

    def __init__(self):
        self.stats = torch.zeros(5, dtype=torch.double)  # found, wanted, rows, seconds, exact seconds
        self.shares: List[torch.Tensor] = []

    def record(self, model, batch, target, hist, selection) -> None:
        m = hist.mask
        ex, ex_sel = selection.exact
        exact_s, own_s = selection.seconds
        if model.pq_active:
            hit = torch.zeros_like(m).scatter(1, selection.idx, selection.sel)
            found, wanted = float((hit.gather(1, ex) & ex_sel).sum()), float(ex_sel.sum())
        else:
            found = wanted = 1.0
        self.stats += torch.tensor([found, wanted, m.shape[0], own_s, exact_s], dtype=torch.double)
        pos = batch["label"] > 0.5
        if bool(pos.any()):
            with torch.no_grad():
                rows = hist.inv[pos]
                sh = model.gsu.modality_shares(target[pos], model.modal(hist.items[rows], hist.queries[rows]), m[pos])
            self.shares.append(sh.float().cpu())

    def metrics(self, model) -> Dict[str, object]:
        out: Dict[str, object] = {}
        names = model.pair.active
        # every process reduces, even one that saw no positive row
        sh = torch.cat(self.shares).sum(0) if self.shares else torch.zeros(len(names))
        n = torch.tensor(float(sum(x.shape[0] for x in self.shares)))
        both = torch.cat([sh.double(), n.double().view(1)])
        r = self.stats.clone()
        if _dist():  # seconds / rows summed over processes: the mean time per row
            both, r = both.to(model.device), r.to(model.device)
            torch.distributed.all_reduce(both)
            torch.distributed.all_reduce(r)
            both, r = both.cpu(), r.cpu()
        if float(both[-1]) > 0:
            for i, name in enumerate(names):
                out[f"test/modality_weight/{name}"] = float(both[i] / both[-1])
        if float(r[2]) == 0:
            return out
        pq = model.pq_active
        out.update({f"test/gsu/recall@{model.hparams.topk}": float(r[0] / r[1].clamp_min(1)),
                    "test/gsu/ms_per_request": 1e3 * float(r[3] / r[2]), "gsu_retrieval": "pq" if pq else "exact"})
        if pq:
            out.update({"test/gsu/exact_ms_per_request": 1e3 * float(r[4] / r[2]),
                        "gsu_backend": model.pq_index.resolved_backend(model.device, for_topk=True),
                        "gsu_bytes_per_behaviour": model.pq_index.bytes_per_behaviour})
        name = getattr(model, "run_name", None) or (f"{type(model).__name__}-pq" if pq else None)
        if name:
            out["name"] = name
        return out


class SeminarTestExtras(pl.Callback):
    """PQ switching and the test extras of the module docstring."""

    def __init__(self):
        self.cold_auc = ColdTargetAUC()
        self._cold = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        self._cold = cold_items(dm) if dm is not None and hasattr(dm, "train_target_items") else None

    @staticmethod
    def _pq_start(trainer, model) -> None:
        if model.pq_index is not None:
            if not bool(model.pq_index.is_fitted):
                model.fit_pq(trainer.datamodule)
            model.use_pq(True)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._pq_start(trainer, pl_module)
        self.cold_auc.reset()
        pl_module.gsu_probe = GSUProbe() if pl_module.hparams.use_gsu else None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.cold_auc.update(outputs["logits"].to(self.cold_auc.device), batch["label"].to(self.cold_auc.device),
                             batch["request_id"].to(self.cold_auc.device), batch["item_id"].to(self.cold_auc.device))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        extra: Dict[str, object] = {}
        if self._cold is not None:
            per_row = getattr(trainer.datamodule, "protocol", "ranking") == "ctr"
            res = self.cold_auc.compute_split(self._cold, per_row=per_row)
            if res:
                extra.update({"test/auc_cold_targets": res["cold"], "test/auc_warm_targets": res["warm"],
                              "test/n_cold_targets": res["n_cold"], "test/n_warm_targets": res["n_warm"]})
        if pl_module.gsu_probe is not None:
            extra.update(pl_module.gsu_probe.metrics(pl_module))
        for name, w in zip(pl_module.pair.item_modalities, pl_module.pair.item_weights().tolist()):
            extra[f"test/gamma/{name}"] = w
        pl_module.extra_test_metrics.update(extra)
        self.cold_auc.reset()
        pl_module.gsu_probe = None
        pl_module.use_pq(False)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._pq_start(trainer, pl_module)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        pl_module.use_pq(False)
