"""Multi-modal item and query encoders (SEMINAR, arXiv 2407.10714, Sec. 3.1).

Each item modality becomes a ``dim``-vector: ``id`` (ID embedding), ``attr`` (sum of
attribute embeddings), ``text`` and ``image`` (linear projections of the dataset's
frozen text / image embeddings). :meth:`ItemEncoder.forward` returns them stacked
as ``[..., M, dim]`` so scores can weight modalities (q.k = (sum_i g_i x_t^(i)) .
(sum_j g_j x_l^(j))); :meth:`ItemEncoder.fused` returns their sum without
materialising the stack.

The dataset's feature tables (attributes, text and image embeddings by id) live in
the encoder as buffers so a checkpoint is self-contained for serving; they are
filled from the DataModule by :meth:`load_tables`.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

ITEM_MODALITIES = ("id", "attr", "text", "image")


def _project(proj: nn.Linear, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """proj(table[ids]); when ids outnumber the table's rows (full ranking, long histories),
    project the whole table once and gather: same values, far fewer FLOPs."""
    if ids.numel() > table.shape[0]:
        return proj(table)[ids]
    return proj(table[ids])


class ItemEncoder(nn.Module):
    def __init__(self, data_meta: dict, dim: int):
        super().__init__()
        mods = set(data_meta["modalities"])
        self.modalities = [m for m in ITEM_MODALITIES if m in mods or m in ("id", "attr")]
        n_items = data_meta["n_items"]
        cards = list(data_meta.get("attr_cardinality", [])) or [0]
        self.id_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.attr_emb = nn.ModuleList(nn.Embedding(c + 1, dim, padding_idx=0) for c in cards)
        self.register_buffer("item_attr", torch.zeros(n_items + 1, len(cards), dtype=torch.long))
        dims = data_meta.get("dims", {})
        self.text_proj = self.image_proj = None
        if "text" in self.modalities:
            self.text_proj = nn.Linear(dims["text"], dim)
            self.register_buffer("item_text", torch.zeros(n_items + 1, dims["text"]))
        if "image" in self.modalities:
            self.image_proj = nn.Linear(dims["image"], dim)
            self.register_buffer("item_image", torch.zeros(n_items + 1, dims["image"]))
        for e in [self.id_emb, *self.attr_emb]:
            nn.init.normal_(e.weight, std=0.05)
            with torch.no_grad():
                e.weight[0].zero_()

    @property
    def n_modalities(self) -> int:
        return len(self.modalities)

    def load_tables(self, tables: Dict[str, Optional[torch.Tensor]]) -> None:
        with torch.no_grad():
            self.item_attr.copy_(tables["item_attr"])
            if self.text_proj is not None:
                self.item_text.copy_(tables["item_text"])
            if self.image_proj is not None:
                self.item_image.copy_(tables["item_image"])

    def modality(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        if name == "id":
            return self.id_emb(ids)
        if name == "attr":
            a = self.item_attr[ids]
            return sum(e(a[..., i]) for i, e in enumerate(self.attr_emb))
        if name == "text":
            return _project(self.text_proj, self.item_text, ids)
        if name == "image":
            return _project(self.image_proj, self.item_image, ids)
        raise KeyError(name)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., M, dim] per-modality vectors, in ``self.modalities`` order."""
        return torch.stack([self.modality(m, ids) for m in self.modalities], dim=-2)

    def fused(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., dim]: the unweighted sum over modalities."""
        out = None
        for m in self.modalities:
            v = self.modality(m, ids)
            out = v if out is None else out + v
        return out


class QueryEncoder(nn.Module):
    """Query vector = ID embedding + projected query text; ``query_id == 0`` (a pure
    recommendation event, or a dataset without queries) gets a learned "no query" vector."""

    def __init__(self, data_meta: dict, dim: int):
        super().__init__()
        n_q = int(data_meta.get("n_queries", 0))
        self.has_queries = n_q > 0
        self.id_emb = nn.Embedding(n_q + 1, dim, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        self.no_query = nn.Parameter(torch.randn(dim) * 0.05)
        self.text_proj = None
        if "query" in data_meta["modalities"]:
            dq = data_meta["dims"]["query"]
            self.text_proj = nn.Linear(dq, dim)
            self.register_buffer("query_text", torch.zeros(n_q + 1, dq))

    def load_tables(self, tables: Dict[str, Optional[torch.Tensor]]) -> None:
        if self.text_proj is not None:
            with torch.no_grad():
                self.query_text.copy_(tables["query_text"])

    def forward(self, qids: torch.Tensor) -> torch.Tensor:
        v = self.id_emb(qids)
        if self.text_proj is not None:
            v = v + _project(self.text_proj, self.query_text, qids)
        return torch.where((qids > 0).unsqueeze(-1), v, self.no_query.expand_as(v))


class UsesFeatureTables:
    """Mixin of the LightningModules that own an ``item_encoder`` and a ``query_encoder``: their
    feature tables are filled from the trainer's DataModule at setup (or by :meth:`load_tables`)."""

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "feature_tables"):
            self.load_tables(dm.feature_tables())

    def load_tables(self, tables) -> None:
        self.item_encoder.load_tables(tables)
        self.query_encoder.load_tables(tables)
