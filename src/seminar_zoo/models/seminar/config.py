"""SEMINAR's typed settings: ``pretrain`` (the PSU stage) and ``pq`` (the approximate GSU).

Both are dataclasses, so ``seminar-zoo fit --help`` / ``--print_config`` list every field, a typo is an
error, and each field can be set alone (``--model.init_args.pretrain.epochs 1``) or the whole group at
once (``--model.init_args.pq '{"n_centroids": 16, "n_sub": 2}'``; ``pq: null`` = exact retrieval).
The model also accepts plain dicts (checkpoints store them so): :func:`as_config` turns them into these.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional, Type, TypeVar, Union

ALIGN_PAIRS = ("text-image", "image-attr", "text-attr")

T = TypeVar("T")


@dataclass
class PretrainConfig:
    """Stage 1, PSU pretraining (:class:`~seminar_zoo.models.seminar.psu.PSU`; paper Sec. 3.2).

    ``epochs`` 0 skips it (the "no pretraining" ablation: random initialisation); ``limit_train_batches``
    caps the PSU's batches per epoch (None: the trainer's). ``lr``, ``dropout``, ``lambda_q``, ``max_len``
    None: the finetuned model's. The rest are the PSU's arguments (loss weights, InfoNCE temperature,
    modality pairs to align, positions drawn per sequence, negatives per next-pair prediction).
    """

    epochs: int = 2
    limit_train_batches: Optional[Union[int, float]] = None
    lr: Optional[float] = None
    weight_decay: float = 0.0
    dropout: Optional[float] = None
    lambda_q: Optional[float] = None
    max_len: Optional[int] = None
    w_align: float = 1.0
    w_next: float = 1.0
    w_relevance: float = 1.0
    temperature: float = 0.1
    align_pairs: List[str] = field(default_factory=lambda: list(ALIGN_PAIRS))
    positions: int = 2
    next_negatives: int = 15

    def __post_init__(self):
        if int(self.epochs) < 0:
            raise ValueError(f"pretrain.epochs must be >= 0, got {self.epochs}")

    def psu_kwargs(self, hp) -> dict:
        """The PSU's arguments, with the unset ones taken from the finetuned model's hyper-parameters ``hp``."""
        kw = dataclasses.asdict(self)
        for k in ("epochs", "limit_train_batches"):
            kw.pop(k)
        for k in ("lr", "dropout", "lambda_q", "max_len"):
            if kw[k] is None:
                kw[k] = hp[k]
        return kw


@dataclass
class PQConfig:
    """``retrieval: pq``: :class:`~seminar_zoo.modules.quantization.MultiModalPQ`'s arguments (codebooks of
    ``n_centroids`` centroids for each of ``n_sub`` sub-vectors per modality, k-means settings, look-up
    table dtype, ``backend``: ``auto`` = faiss on CPU, torch elsewhere) and ``fit_rows``, the training
    behaviour vectors the codebooks are fitted on."""

    n_sub: Union[int, List[int]] = 8
    n_centroids: int = 64
    n_iter: int = 15
    aniso_eta: float = 1.0
    seed: int = 0
    init: str = "kmeans++"
    max_points_per_centroid: int = 64
    init_points_per_centroid: int = 16
    lut_dtype: str = "float32"
    backend: str = "auto"
    chunk_bytes: int = 2 << 20
    fit_rows: int = 20000

    def quantizer_kwargs(self) -> dict:
        kw = dataclasses.asdict(self)
        kw.pop("fit_rows")
        return kw


def as_config(value: Any, cls: Type[T], name: str) -> Optional[T]:
    """``value`` (None, a dict or a ``cls``) as a ``cls``; unknown keys are a ValueError naming the allowed ones."""
    if value is None or isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of settings, got {value!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ValueError(f"unknown {name} settings {bad}; allowed: {sorted(allowed)}")
    return cls(**value)
