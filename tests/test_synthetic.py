"""The synthetic generator: deterministic, atomic, and it plants the mechanisms it claims."""
import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from seminar_zoo.data import synthetic
from seminar_zoo.data.schema import validate_dataset


def _digest(path):
    h = hashlib.sha256()
    for f in ("items.parquet", "queries.parquet", "events.parquet"):
        h.update(pq.read_table(path / f).to_pandas().to_csv().encode())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    a = synthetic.generate(tmp_path / "a", users=50, items=200, seq_len=30, seed=1)
    b = synthetic.generate(tmp_path / "b", users=50, items=200, seq_len=30, seed=1)
    c = synthetic.generate(tmp_path / "c", users=50, items=200, seq_len=30, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)


def test_atomic_on_failure(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(synthetic, "emb_array", boom)
    with pytest.raises(RuntimeError):
        synthetic.generate(tmp_path / "out", users=20, items=100, seq_len=20)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_modalities_queries_and_imbalance(tiny_data):
    t = validate_dataset(tiny_data)
    text_norm = np.linalg.norm(t.item_text[1:], axis=1).mean()
    image_norm = np.linalg.norm(t.item_image[1:], axis=1).mean()
    assert 8 < image_norm / text_norm < 12
    q = t.events["query_id"][t.events["label"] == 1]
    assert 0.2 < (q == 0).mean() < 0.45  # pure recommendation events exist, searches dominate
    meta = t.meta
    # queries name the topic the user pursues: query topic == item topic for most search events
    item_topic = np.asarray(meta["item_topic"])
    ev = t.events
    s = (ev["label"] == 1) & (ev["query_id"] > 0)
    q_topic = (ev["query_id"][s] - 1) // synthetic.QUERY_VARIANTS
    assert (q_topic == item_topic[ev["item_id"][s] - 1]).mean() > 0.85


def test_long_range_return_targets(tiny_data):
    """Test targets mostly return to a topic seen only far back (not in the last half)."""
    t = validate_dataset(tiny_data)
    topic = np.asarray(t.meta["item_topic"])
    ev = t.events
    pos = ev["label"] == 1
    u, item = ev["user_id"][pos], ev["item_id"][pos]
    far = 0
    users = np.unique(u)
    for uid in users:
        seq = topic[item[u == uid] - 1]
        hist, target = seq[:-2], seq[-1]
        recent = set(hist[len(hist) // 2:].tolist())
        far += (target in set(hist.tolist())) and (target not in recent)
    assert far / len(users) > 0.6


def test_million_event_generation(tmp_path):
    # speed is measured by experiments/bench/datamodule.py; here only that the vectorised path holds up
    synthetic.generate(tmp_path / "big", users=2000, items=1000, seq_len=500)
    meta = json.loads((tmp_path / "big" / "meta.json").read_text())
    assert meta["n_events"] > 1_000_000
