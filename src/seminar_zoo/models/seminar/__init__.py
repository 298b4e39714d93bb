"""SEMINAR (arXiv 2407.10714) as a package of named parts, each with its own file and golden test.

* :mod:`.config`: typed ``pretrain`` / ``pq`` settings (:class:`PretrainConfig`, :class:`PQConfig`).
* :mod:`.psu`: the pretraining search unit (stage 1) and :mod:`.losses`, its losses.
* :mod:`.gsu`: G(j) and the GSU's one :meth:`~.gsu.GSU.select` (exact or PQ top-K).
* :mod:`.esu`: the ESU (target attention with the GSU bias).
* :mod:`.pq`: the quantizer's codebooks (fit, checkpoint).
* :mod:`.model`: :class:`SEMINAR`, the RecModel composing them (stage 2).
* :mod:`.extras`: the test extras as a callback and metric objects.

The pair fusion is shared with every baseline (:mod:`seminar_zoo.modules.pair`); the two-stage run
(pretrain, restore, finetune, test) is :mod:`seminar_zoo.pipeline`.
"""
from .config import PQConfig, PretrainConfig
from .model import SEMINAR
from .psu import PSU

SEMINAR.__module__ = __name__  # class_path seminar_zoo.models.seminar.SEMINAR (configs, checkpoints)

__all__ = ["SEMINAR", "PSU", "PretrainConfig", "PQConfig"]
