"""SEMINAR's Exact Search Unit (arXiv 2407.10714, Sec. 3.3).

The ESU is multi-head target attention (:class:`~seminar_zoo.modules.attention.TargetAttention`, the
same parameters ``q``, ``k``, ``v``, ``out`` as the PSU's, from which it is initialised) over the K
behaviours the GSU selected, with the GSU's exact scores of those K added to its logits
(``bias``; ``gsu_bias: false`` drops it): out = sum_k softmax_k(<W_q t, W_k e_k>/sqrt(d_h) + s_k) W_v e_k.
"""
from __future__ import annotations

from ...modules.attention import TargetAttention


class ESU(TargetAttention):
    """``forward(target [B, d], keys [B, K, d], selected [B, K], bias [B, K] or None)`` -> [B, d] (module docstring)."""
